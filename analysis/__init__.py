"""Results analysis: tidy loading, speed-accuracy Pareto fronts, figures, published comparison.

`python -m analysis --results results/records.jsonl --out figures` (or `make figures`) redraws every
figure and `figures/summary.md` from stored records, running no model. Submodules are imported on
demand so that loading results never pulls in matplotlib.
"""
