"""The short summary tables a run prints: what a researcher looks at first."""

from __future__ import annotations

import json

import pandas as pd

NAN = float("nan")


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
    noise = "  (within noise)" if m.get("within_noise") else ""
    lines.append(
        f"speedup {m.get('speedup', nan):.3f}x  [95% CI {m.get('speedup_ci_low', nan):.3f}-"
        f"{m.get('speedup_ci_high', nan):.3f}, {m.get('timing_samples', 0)} interleaved samples]{noise}   "
        f"FLOPs ratio {m.get('flops_ratio', nan):.3f}   acceptance {m.get('acceptance_rate', nan):.3f}"
    )
    if m.get("workloads"):
        lines += ["", _workloads(m, summary["mode"])]
    if m.get("batch_sizes"):
        lines += ["", _batches(m, summary["mode"])]
    if "predicted_tpot_ms" in m:
        lines += ["", _breakdown(m)]
    if m.get("heads_selection"):
        lines += ["", _selection(m["heads_selection"], summary["head_layers"])]
    if summary.get("profile"):
        lines += ["", summary["profile"]]
    acc = {k: v for k, v in m.items() if k.startswith(("acc.", "acc_full.", "acc_delta."))}
    if acc:
        lines += ["", "accuracy (early-exit model vs full, lm-eval):"]
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(acc.items())]
    return "\n".join(lines)


def _batches(m: dict, mode: str) -> str:
    """Per batch size and workload: the mode's and transformers' batched generate's throughput
    against full at that B, the per-sequence speedup, full's tokens/s (docs/batches.md)."""
    rows = []
    for size in _names(m["batch_sizes"]):
        prefix = f"batch.{size}.workload."
        workloads = sorted({k[len(prefix) :].split(".")[0] for k in m if k.startswith(prefix)})
        for workload in sorted(workloads, key=lambda w: w == "overall"):
            at = f"{prefix}{workload}."
            rows.append(
                {
                    "B": size,
                    "workload": workload,
                    f"{mode} throughput": _interval(m, at + "throughput_speedup"),
                    "per sequence": _interval(m, at + "seq_speedup"),
                    "batched generate": _interval(m, at + "baseline.hf_generate.throughput_speedup"),
                    "full tok/s": f"{m.get(at + 'full_tokens_per_s', NAN):.1f}",
                }
            )
    table = pd.DataFrame(rows).set_index(["B", "workload"]).to_string()
    return f"batches: each against full at the same batch size B\n{table}"


def _interval(m: dict, key: str) -> str:
    return f"{m.get(key, NAN):.3f}x [{m.get(key + '_ci_low', NAN):.3f}-{m.get(key + '_ci_high', NAN):.3f}]"


def _names(value: object) -> list[str]:
    return json.loads(value) if isinstance(value, str) else list(value or [])


def _workload_row(m: dict, prefix: str, workload: str, method: str, prompts: object) -> dict:
    w = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix)}
    quality = [
        f"{k[8:]} {v:.3f} (full {w[f'quality_full.{k[8:]}']:.3f}, delta "
        f"[{w[f'quality_delta_ci_low.{k[8:]}']:+.3f}, {w[f'quality_delta_ci_high.{k[8:]}']:+.3f}])"
        for k, v in w.items()
        if k.startswith("quality.")
    ]
    same = w.get("outputs_equal_full")
    if same is False and "first_divergence_prompt" in w:
        margin = w.get("divergence_margin")
        same = (
            f"no: {w.get('prompts_differing')} prompt(s), first #{w['first_divergence_prompt']} at token "
            f"{w['first_divergence_position']}" + ("" if margin is None else f", margin {margin:.3g}")
        )
    return {
        "workload": workload,
        "method": method,
        "prompts": w.get("prompts", prompts),
        "speedup [95% CI]": _interval(w, "speedup"),
        "decode speedup": f"{w.get('decode_speedup', NAN):.3f}x",
        "tok/pass": f"{w.get('mean_accepted_tokens', NAN):.2f}",
        "same as full": same,
        "quality": "; ".join(quality) or "—",
    }


def _workloads(m: dict, mode: str) -> str:
    """Per workload: speed and quality measured on the same generations (the Spec-Bench view), the
    run's mode first, then each baseline timed beside it (bench.baselines)."""
    names, baselines = _names(m["workloads"]), _names(m.get("baselines"))
    rows = []
    for name in [*names, "overall"]:
        total = sum(m.get(f"workload.{n}.prompts", 0) for n in names)
        rows.append(_workload_row(m, f"workload.{name}.", name, mode, total))
        for b in baselines:
            rows.append(_workload_row(m, f"workload.{name}.baseline.{b}.", name, b, total))
    frame = pd.DataFrame(rows)
    if not baselines:
        frame = frame.drop(columns="method")
    table = frame.set_index("workload").to_string()
    return (
        "workloads (speed and quality on the same generations; speedup = tokens/s with the prefill, "
        "paired 95% CI; tok/pass = tokens per full-depth pass):\n" + table
    )


def _breakdown(m: dict) -> str:
    """Predicted ms per token by part (the cost model) beside the measured mean, mode and full."""
    parts = sorted({k.split(".", 1)[1] for k in m if k.startswith("time_ms.")})
    rows = [(p, m[f"time_ms.{p}"], m.get(f"full_time_ms.{p}")) for p in parts]
    rows += [
        ("predicted total", m["predicted_tpot_ms"], m.get("full_predicted_tpot_ms")),
        ("measured (mean)", m.get("tpot_ms_mean"), m.get("full_tpot_ms_mean")),
        ("prediction error", m.get("prediction_error"), m.get("full_prediction_error")),
    ]
    table = pd.DataFrame(rows, columns=["ms per token (cost model)", "mode", "full"]).set_index(
        "ms per token (cost model)"
    )
    return (
        table.to_string(float_format="%.4f")
        + f"\npredicted speedup {m.get('predicted_speedup', float('nan')):.3f}x"
    )


def _selection(sel: dict, layers: list[int]) -> str:
    """calibration.heads=priced: which heads were kept and what the choice was priced at."""
    first, best = sel["tried"][0], next(s for s in sel["tried"] if s["heads"] == sel["kept"])
    return (
        f"heads kept (calibration.heads=priced): {sel['kept']} of {layers}; priced on calibration "
        f"prompts at {best['priced_tpot_ms']:.3f} ms/token (heads {first['heads']}: "
        f"{first['priced_tpot_ms']:.3f}, full: {sel['full_priced_tpot_ms']:.3f})"
    )


def _g(x: float | None) -> float | None:
    return None if x is None else x / 1e9
