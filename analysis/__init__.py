"""Results analysis: tidy loading, speed-accuracy Pareto fronts, figures, published comparison.

`python -m analysis --results results/records.jsonl --out figures` (or `make figures`) redraws every
figure (a speed-quality front per generation workload among them) and `figures/summary.md` from
stored records, running no model; `python -m analysis.project
--profile PROFILE.json` re-prices their pass traces with another device's profile (projected, never
mixed with measured numbers). Submodules are imported on
demand so that loading results never pulls in matplotlib.
"""
