"""Markdown tables from the benchmark script's JSONs, for BENCHMARKS.md.

    python scripts/summarise_benchmark.py                  # every benchmarks/results/*.json
    python scripts/summarise_benchmark.py benchmarks/results/cuda-pythia-1.4b-float16.json

Why: BENCHMARKS.md's numbers should come from the stored JSON by a command, not be copied by
hand, and on a lent GPU there are minutes to read four of them. Per JSON: the machine and
settings; each mode's time per token, speedup with its interval, work per token and predicted
time; `full` against HF `generate` and the bandwidth roofline; predicted against measured
speedups; where the time goes. Each mode is compared with `full` of its own regime (eager, or
CUDA graphs: "<mode> (graphs)"), as the benchmark measured it. Plain Python, no pandas, Hydra
or lm-eval, so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results")
GRAPHS = " (graphs)"
# Row labels of the cost model's categories. The rows themselves come from the JSON (whatever
# categories it holds, in its order), so a category added later shows up under its own name.
# Not imported from analysis/plotting.py: that needs matplotlib, absent on a bare GPU box.
PARTS = {
    "layers_full": "layers of tokens at full depth",
    "layers_draft": "drafting / exited tokens' layers",
    "layers_verify": "verification layers (drafts above their exit)",
    "layers_fill": "exited tokens' KV-fill rows",
    "kv_projections": "exited tokens' K/V projections",
    "head_matmuls": "head matmuls",
    "exit_decisions": "exit decisions (metric, threshold, host read)",
    "unembedding": "unembedding",
    "pass_fixed": "per-pass fixed",
}


def baseline_of(name: str) -> str:
    return "full" + GRAPHS if name.endswith(GRAPHS) else "full"


def _num(value, fmt: str = "{:.2f}", empty: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return empty
    return fmt.format(value)


def _speedup(mode: dict, is_baseline: bool) -> str:
    if is_baseline:
        return "1.000×"
    if "speedup" not in mode:  # written before the timing protocol: a ratio without an interval
        old = mode.get("speedup_vs_full")
        return "–" if old is None else f"{old:.3f}× (no interval: older JSON)"
    text = f"{mode['speedup']:.3f}× [{mode['speedup_ci_low']:.3f}–{mode['speedup_ci_high']:.3f}]"
    return text + (", within noise" if mode.get("within_noise") else "")


def _predicted(mode: dict) -> float | None:
    predicted = mode.get("predicted_ms")
    return predicted["tpot_ms"] if isinstance(predicted, dict) else None


def summarise(record: dict, source: str) -> str:
    """One JSON as markdown: a heading, the modes table, the comparisons, the breakdown."""
    env, settings, modes = record["environment"], record.get("settings", {}), record["modes"]
    lines = [
        f"### {record['model']} ({record.get('weights', '?')} weights), "
        f"{env['device_name'] or env['device']} ({env['device']}, {env['dtype']})",
        "",
        f"From `{source}`: torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"{env.get('threads')} threads, commit {env.get('git_commit')}; {settings.get('prompts')} prompts of "
        f"{settings.get('prompt_len')} tokens x {settings.get('repeats')} repeats, "
        f"{settings.get('max_new_tokens')} new tokens; CUDA graphs: {record.get('graphs')}.",
        "",
        "| mode | ms / token (median) | speedup vs full [95% CI] | layers / token | heads evaluated / token "
        "| acceptance (head drafts / demo's) | FLOPs / token | predicted ms / token | prediction error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, mode in modes.items():
        accept = mode.get("acceptance_rate")
        acceptance = (
            "–"
            if accept is None or math.isnan(accept)
            else f"{accept:.2f} / {mode.get('acceptance_rate_demo', accept):.2f}"
        )
        flops = mode.get("flops_per_token") or None
        lines.append(
            f"| {name} | {mode['tpot_ms']:.3f} | {_speedup(mode, name == baseline_of(name))} "
            f"| {_num(mode.get('layers_per_token') if flops else None)} "
            f"| {_num(mode.get('heads_evaluated_per_token') if flops else None)} | {acceptance} "
            f"| {_num(flops / 1e6 if flops else None, '{:.2f} M')} | {_num(_predicted(mode), '{:.3f}')} "
            f"| {_num(mode.get('prediction_error'), '{:+.1%}')} |"
        )
    lines.append("")
    for name in ("full", "full" + GRAPHS):
        hf = modes.get(name, {}).get("vs_hf_generate")
        if hf:
            lines.append(
                f"- `{name}` vs HF `generate`: **{hf['ratio']:.3f}× [{hf['ratio_ci_low']:.3f}–"
                f"{hf['ratio_ci_high']:.3f}]**{' (within noise)' if hf.get('within_noise') else ''}."
            )
    roofline = record.get("roofline")
    if roofline:
        fastest = min(modes[n]["tpot_ms"] for n in ("full", "full" + GRAPHS) if n in modes)
        bound = roofline["roofline_ms_per_token"]
        lines.append(
            f"- Bandwidth roofline: {roofline['weight_bytes_per_token'] / 1e6:.1f} MB of weights per "
            f"token / {roofline['copy_bandwidth_GBps']:.1f} GB/s = {bound:.3f} ms per token; the "
            f"fastest `full` is {fastest / bound:.1f}× above it."
        )
    equal = record.get("outputs_equal_full") or {}
    if equal:
        same = ", ".join(f"{n} {'yes' if ok else '**no**'}" for n, ok in equal.items())
        lines.append(f"- Output equal to `full` token for token: {same}.")
    pairs = []
    for name, mode in modes.items():
        base = modes.get(baseline_of(name))
        if name == baseline_of(name) or base is None or _predicted(mode) is None or _predicted(base) is None:
            continue
        predicted = _predicted(base) / _predicted(mode)
        measured = base["tpot_ms_mean"] / mode["tpot_ms_mean"]
        pairs.append(f"{name} {predicted:.3f}× / {measured:.3f}× ({predicted / measured - 1:+.1%})")
    if pairs:
        lines.append("- Predicted / measured speedup (means): " + "; ".join(pairs) + ".")
    priced = [n for n, m in modes.items() if isinstance(m.get("predicted_ms"), dict)]
    if priced:
        lines += ["", "Where the time goes (predicted ms per output token):", ""]
        lines.append("| part | " + " | ".join(priced) + " |")
        lines.append("|---|" + "---|" * len(priced))
        parts = dict.fromkeys(k for n in priced for k in modes[n]["predicted_ms"] if k != "tpot_ms")
        for key in parts:
            cells = [modes[n]["predicted_ms"].get(key, 0.0) for n in priced]
            if any(cells):
                label = PARTS.get(key, key)
                lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" if c else "–" for c in cells) + " |")
        lines.append("| **total** | " + " | ".join(f"{_predicted(modes[n]):.2f}" for n in priced) + " |")
    return "\n".join(lines) + "\n"


def load(path: Path) -> dict:
    """A benchmark JSON, or a clear error naming the file."""
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise SystemExit(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not JSON: {err}") from None
    if not isinstance(record, dict) or "modes" not in record or "environment" not in record:
        raise SystemExit(
            f"{path} is not a benchmark JSON of scripts/benchmark_decoding.py (no 'modes' or 'environment')"
        )
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, help=f"benchmark JSONs (default: every {RESULTS}/*.json)")
    args = p.parse_args()
    stored = [q for q in sorted((ROOT / RESULTS).glob("*.json")) if not q.name.startswith("passes-")]
    paths = args.paths or [q.relative_to(ROOT) if Path.cwd() == ROOT else q for q in stored]
    if not paths:
        raise SystemExit(f"no benchmark JSON under {RESULTS}/: run scripts/benchmark_decoding.py first")
    records = [(path, load(path)) for path in paths]
    sys.stdout.write("\n".join(summarise(record, str(path)) for path, record in records))


if __name__ == "__main__":
    main()
