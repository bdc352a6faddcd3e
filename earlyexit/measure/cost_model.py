"""A run's time per token, predicted by pricing its pass trace with a component profile.

Why: a measured speedup alone cannot say whether a method is slow or its implementation is;
pricing what was computed (``earlyexit.model.trace``) with what each piece costs
(``earlyexit.measure.profile``) splits the time into parts, and a prediction that misses the
measurement says which part the model does not explain. The same trace priced with another
device's profile is a projection (``python -m analysis.project``), never a measurement.

Categories (ms per output token after the first):
- ``layers_full``: layers run by tokens that went to full depth in their own pass;
- ``layers_draft``: layers run by tokens that exited (drafts, early-exited tokens) before exiting;
- ``layers_verify``: speculative modes: drafts carried through the layers above their exit;
- ``layers_fill``: early-exit: exited tokens' skipped layers, run to fill their K/V;
- ``kv_projections``: early-exit with ``engine.kv=propagate``: exited tokens' K/V projected
  from their exit state for the layers they skipped;
- ``head_matmuls``: every evaluated head's own matmul (a batched check of m rows as one call of m
  rows, ``TraceCounts.head_calls``);
- ``exit_decisions``: metric, threshold and host read beyond the head's matmul;
- ``unembedding``: final norm + output matmul over a full-depth pass's rows;
- ``pass_fixed``: per engine pass, everything outside the above (embedding, bookkeeping, loop).
A segment's time is split between its new and pending rows in proportion to their rows. Its
layers that the pass before ran too are priced by that pass's depth and by how many shallow
passes ran in a row before it (``PassTrace.warm_layers``, ``previous_run``): over a run of
shallow passes their weights settle in cache (``CostProfile.depth_ratio``), which on a CPU
makes later drafts of a run, and a verification's layers below the exit, cheaper per layer.
"""

from __future__ import annotations

from earlyexit.measure.profile import CostProfile
from earlyexit.model.trace import TraceCounts

CATEGORIES = (
    "layers_full",
    "layers_draft",
    "layers_verify",
    "layers_fill",
    "kv_projections",
    "head_matmuls",
    "exit_decisions",
    "unembedding",
    "pass_fixed",
)
# Where the rows of exited tokens carried deeper go, per mode.
PENDING_KIND = {
    "early-exit": "layers_fill",
    "dssd": "layers_verify",
    "layerskip": "layers_verify",
    "del": "layers_verify",
}
# Which metric's decision a mode's exit checks pay (layerskip always exits: a bare head call). del's
# drafts are priced as bare head calls too: its confidence stop (a max-prob) and its shadow tokens (a
# batched head call per candidate layer per round, outside the pass trace) are not priced, so its
# prediction is low by their cost (docs/cost-model.md).
DECIDES = {"early-exit": True, "dssd": True, "layerskip": False, "del": False, "full": False}


def price(trace: TraceCounts, profile: CostProfile, mode: str, metric: str | None) -> dict[str, float]:
    """Total predicted milliseconds per category for the work in `trace`."""
    if mode not in DECIDES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(DECIDES)}")
    out = dict.fromkeys(CATEGORIES, 0.0)
    pending_kind = PENDING_KIND.get(mode, "layers_verify")
    for (layers, new, pending, kv_len, exited, reuse, warm, run), count in trace.segments.items():
        total = count * profile.segment_ms(layers, new + pending, kv_len, reuse, warm, run)
        out["layers_draft" if exited else "layers_full"] += total * new / (new + pending)
        out[pending_kind] += total * pending / (new + pending)
    evaluated = trace.heads_evaluated
    # Batched checks: a call of m rows at its own price; every other evaluated row is a one-row call.
    in_calls = sum(rows * n for rows, n in trace.head_calls.items())
    shared = sum(n * profile.head_call_ms(rows) for rows, n in trace.head_calls.items())
    out["head_matmuls"] = shared + (evaluated - in_calls + trace.extra_head_rows) * profile.head_ms
    out["exit_decisions"] = evaluated * profile.decision_overhead_ms(metric if DECIDES[mode] else None)
    if trace.projections:
        out["kv_projections"] = trace.projected_rows * profile.projection_ms()
    out["unembedding"] = sum(n * profile.unembedding_ms(rows) for rows, n in trace.unembed.items())
    out["pass_fixed"] = trace.passes * profile.pass_fixed_ms
    return out


def predict(
    trace: TraceCounts, decode_tokens: int, profile: CostProfile, mode: str, metric: str | None
) -> dict[str, float]:
    """Predicted ms per output token: the total (``tpot_ms``) and one entry per category."""
    if decode_tokens < 1:
        raise ValueError(f"need at least one decoded token to price, got {decode_tokens}")
    parts = {k: v / decode_tokens for k, v in price(trace, profile, mode, metric).items()}
    return {"tpot_ms": sum(parts.values()), **parts}
