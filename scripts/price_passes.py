"""Every engine pass timed and priced, grouped by what it computed (a diagnostic, not a test).

    python scripts/price_passes.py                 # embedded model, its shipped heads, CPU

Why: a run's prediction error says *that* the cost model misses, not *where*. This script
times each decode pass of a few modes on its own (a clock and a device sync around every
``ExitEngine.forward``, which the timing protocol never does) and sets the median beside the
price the cost model gives that pass, per pass shape: its depth, the depth of the pass before
it (whose layers it finds warm, ``PassTrace.warm_layers``), how many shallow passes ran in a row
before it (``previous_run``, at most the profile's ``DEPTH_RUN``) and its rows. It prices each
pass twice, with the profile's depth ratio and without it, so what cache warmth explains is
visible. The profile's rounds run between the prompts (one round after each), as the runner's do.
Modes: ``full``; LayerSkip at two exit layers (drafts after drafts, then a verification); and
early-exit with thresholds every score passes, under ``engine.kv=fill`` and ``skip`` (every
token exits at the first head: runs of shallow passes). Prints a table and stores JSON under
benchmarks/results/. Kept free of Hydra, pandas and lm-eval so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from earlyexit.data.streams import token_streams
from earlyexit.decoding import DecodeSettings, EarlyExitDecoding, FullDecoding, LayerSkipDecoding
from earlyexit.decoding.base import engine_for
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.cost_model import price
from earlyexit.measure.json_text import dumps_readable
from earlyexit.measure.profile import DEPTH_RUN, WARMUP_ROUNDS, CostProfile, ProfileRounds, kv_span
from earlyexit.measure.protocol import prompt_set
from earlyexit.measure.timing import device_name, environment, synchronize
from earlyexit.model.adapter import get_adapter
from earlyexit.model.loading import EMBEDDED_MODEL_DIR, load_model
from earlyexit.model.trace import TraceCounts

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def strategies(heads: HeadSet) -> dict:
    """full; LayerSkip at the second and the deepest head; early-exit at the first head, always."""
    always = ThresholdPolicy(heads, "entropy", dict.fromkeys(heads.layers, -1e30))
    second, deepest = heads.layers[min(1, len(heads.layers) - 1)], heads.layers[-1]
    return {
        "full": FullDecoding(),
        f"layerskip E={second}": LayerSkipDecoding(heads, second, 4),
        f"layerskip E={deepest}": LayerSkipDecoding(heads, deepest, 4),
        "early-exit always, kv=fill": EarlyExitDecoding(always, "fill"),
        "early-exit always, kv=skip": EarlyExitDecoding(always, "skip"),
    }


def timed_passes(adapter, modes: dict, prompts, settings, repeats: int, between=None) -> dict[str, list]:
    """mode -> [(PassTrace, seconds)] for every decode pass (prefills left out), modes in turn
    per prompt after one untimed generation each; `between()` after each prompt's modes."""
    out: dict[str, list] = {name: [] for name in modes}
    engines = {}
    for name, strategy in modes.items():
        engine = engine_for(strategy, adapter)
        forward = engine.forward

        def timed(ids, exit_check=None, forward=forward, log=out[name], device=adapter.device):
            synchronize(device)
            start = time.perf_counter()
            result = forward(ids, exit_check)
            synchronize(device)
            if ids.numel() == 1:  # a decode pass, not the prompt's prefill
                log.append((result.trace, time.perf_counter() - start))
            return result

        engine.forward = timed  # this engine's passes only; the class is untouched
        engines[name] = engine
        strategy.generate(engine, prompts[0], settings)
        out[name].clear()
    for _ in range(repeats):
        for prompt in prompts:
            for name, strategy in modes.items():
                strategy.generate(engines[name], prompt, settings)
            if between is not None:
                between()
    return out


def pass_table(passes: dict[str, list], profile: CostProfile, metric: str) -> list[dict]:
    """Per mode and pass shape: count, median measured ms, priced ms with and without the
    profile's depth ratio."""
    flat = CostProfile.from_json({**profile.to_json(), "depth_ratio": None})
    rows = []
    for name, items in passes.items():
        kind = name.split(" ")[0]  # the cost model's mode: full, layerskip, early-exit
        groups = defaultdict(list)
        for trace, seconds in items:
            run = min(trace.previous_run, DEPTH_RUN)  # longer runs are priced alike
            groups[trace.depth, trace.previous_depth, run, max(s.rows for s in trace.segments)].append(
                (trace, seconds)
            )
        for (depth, previous, run, rows_), group in sorted(groups.items()):
            one = TraceCounts()
            one.add(group[0][0])

            def priced(p: CostProfile, one=one, kind=kind) -> float:
                return sum(price(one, p, kind, metric).values())  # layerskip's checks: no decision

            measured = 1e3 * statistics.median(s for _, s in group)
            rows.append(
                {
                    "mode": name,
                    "depth": depth,
                    "previous_depth": previous,
                    "previous_run": run,
                    "rows": rows_,
                    "passes": len(group),
                    "measured_ms": measured,
                    "priced_ms": priced(profile),
                    "priced_flat_ms": priced(flat),
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=Path, help="head file (default: the embedded model's shipped heads)")
    p.add_argument("--data", default="stdlib", help="text for the prompts")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")

    model, tokenizer = load_model(dtype=DTYPES[args.dtype], device=args.device)
    adapter = get_adapter(model)
    head_file = args.heads or next(iter(sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))))
    heads = HeadSet.load(head_file, adapter)
    _, _, heldout = token_streams(tokenizer, args.data)
    prompts = prompt_set(heldout, args.prompts, args.prompt_len, args.seed)
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens)
    kv = kv_span(args.prompt_len, args.max_new_tokens)
    rounds = ProfileRounds(adapter, heads, kv, 8, None, device_name(adapter.device))
    rounds.run(WARMUP_ROUNDS, timed=False)
    passes = timed_passes(adapter, strategies(heads), prompts, settings, args.repeats, rounds.run)
    profile = rounds.result()
    table = pass_table(passes, profile, "entropy")
    print(profile.describe())
    print(f"{'mode':28s} depth after  run rows passes  measured  priced (x)  no depth ratio (x)")
    for r in table:
        print(
            f"{r['mode']:28s} {r['depth']:5d} {r['previous_depth']:5d} {r['previous_run']:4d} {r['rows']:4d}"
            f" {r['passes']:6d}"
            f"  {r['measured_ms']:7.3f}  {r['priced_ms']:6.3f} ({r['priced_ms'] / r['measured_ms']:.2f})"
            f"  {r['priced_flat_ms']:6.3f} ({r['priced_flat_ms'] / r['measured_ms']:.2f})"
        )
    env = environment(adapter.device, adapter.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"passes-{env['device']}-{adapter.model_id.replace('/', '_')}-{env['dtype']}.json"
    record = {"environment": env, "settings": {k: str(v) for k, v in vars(args).items()}, "passes": table}
    record["profile"] = profile.to_json()
    path.write_text(dumps_readable(record) + "\n")
    print(f"stored {path}")


if __name__ == "__main__":
    main()
