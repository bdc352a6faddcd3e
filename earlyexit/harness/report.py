"""The short summary tables a run prints: what a researcher looks at first."""

from __future__ import annotations

import pandas as pd


def format_summary(summary: dict) -> str:
    sep = pd.DataFrame(summary["separation"]).pivot(index="layer", columns="metric", values="auroc")
    check = pd.DataFrame(summary["heldout_check"]).pivot(
        index="target", columns="layer", values="heldout_agreement"
    )
    shares = pd.DataFrame(summary["exit_shares"]).set_index("target")
    agree = pd.Series(summary["heldout_agreement"], name="agreement")
    cost = summary["head_cost"]
    m = summary["metrics"]
    lines = [
        f"model {summary['model']}  layers {summary['num_layers']}  heads {summary['architecture']} "
        f"at {summary['head_layers']}  (one head = {cost['layers_equivalent']:.2f} layers)",
        "",
        "held-out agreement of each head with the final layer:",
        agree.to_string(float_format="%.3f"),
        "",
        "AUROC of each metric for predicting agreement (higher separates better):",
        sep.to_string(float_format="%.3f"),
        "",
        "calibration check: agreement achieved on held-out tokens that pass each head's threshold",
        check.to_string(float_format="%.3f"),
        "",
        f"share of held-out tokens leaving at each head, metric {summary['metric']}:",
        shares.to_string(float_format="%.3f"),
        "",
        f"mode {summary['mode']} at target {summary['target']}:",
    ]
    rows = [
        ("tokens/s", m.get("tokens_per_s"), m.get("full_tokens_per_s")),
        ("time per output token, ms", m.get("tpot_ms"), m.get("full_tpot_ms")),
        ("time to first token, ms", m.get("ttft_ms"), m.get("full_ttft_ms")),
        ("layers per token", m.get("layers_per_token"), m.get("full_layers_per_token")),
        ("GFLOPs per token", _g(m.get("flops_per_token")), _g(m.get("full_flops_per_token"))),
    ]
    table = pd.DataFrame(rows, columns=["", summary["mode"], "full"]).set_index("")
    lines.append(table.to_string(float_format="%.3f"))
    nan = float("nan")
    lines.append(
        f"speedup {m.get('speedup', nan):.3f}x   FLOPs ratio {m.get('flops_ratio', nan):.3f}   "
        f"acceptance {m.get('acceptance_rate', nan):.3f}"
    )
    acc = {k: v for k, v in m.items() if k.startswith(("acc.", "acc_full.", "acc_delta."))}
    if acc:
        lines += ["", "accuracy (early-exit model vs full, lm-eval):"]
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(acc.items())]
    return "\n".join(lines)


def _g(x: float | None) -> float | None:
    return None if x is None else x / 1e9
