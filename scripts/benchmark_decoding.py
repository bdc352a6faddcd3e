"""Decoding benchmark (not a test): every mode on a fixed, seeded prompt set.

    python scripts/benchmark_decoding.py                        # embedded model, its shipped heads
    python scripts/benchmark_decoding.py --random-weights pythia-160m --device cuda --dtype float16

Uses the runner's timing protocol (earlyexit/measure/protocol.py): every mode, `full` and
transformers' alternatives (`--baselines`, earlyexit/measure/baselines.py: `generate`, and on
request draft-model `assisted` and `prompt_lookup`) interleaved prompt by prompt, speedups against
`full` with a paired bootstrap 95% interval. Prints and stores (JSON, under benchmarks/results/)
time per output token, speedups, each mode's time predicted by the cost model beside the measured one, and
the bandwidth roofline, with machine, dtype and versions; stores the component cost profile
(earlyexit/measure/profile.py, timed in rounds between the samples so it prices them on the
machine they ran on) under benchmarks/profiles/, which `python -m analysis.project` uses to
project stored runs onto this device. Random-weight Pythia shapes have meaningless
exits, so only full and layerskip (a fixed pattern whose cost is real) are timed there, plus
the profile. Early-exit runs once per KV strategy in `--kv` ("early-exit kv=propagate", ...).
Every mode and the profile are measured eagerly and, on CUDA, again with
segments and heads replayed as CUDA graphs (earlyexit/model/graphs.py), stored side by side,
never mixed. Kept free of Hydra, pandas and lm-eval so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from transformers import GPTNeoXForCausalLM

from earlyexit.data.streams import token_streams
from earlyexit.decoding import (
    DecodeSettings,
    DELDecoding,
    DSSDDecoding,
    EarlyExitDecoding,
    FullDecoding,
    LayerSkipDecoding,
)
from earlyexit.exits.calibrate import calibrate
from earlyexit.exits.head_stats import collect_head_stats
from earlyexit.exits.heads import HeadSet, HeadSpec, place_heads
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.baselines import BASELINES, check_baselines, hf_early_exit_unsupported, make_baseline
from earlyexit.measure.batches import HF_BATCHED, batch_metrics, check_batch_sizes, measure_batches
from earlyexit.measure.cost_model import DECIDES, predict
from earlyexit.measure.json_text import dumps_readable
from earlyexit.measure.machine import machine_metrics, take_reading, warn_if_busy
from earlyexit.measure.profile import WARMUP_ROUNDS, ProfileRounds, kv_span
from earlyexit.measure.protocol import interleaved_rounds, measure_interleaved, prompt_set, speedup_interval
from earlyexit.measure.timing import copy_bandwidth, device_name, environment, synchronize
from earlyexit.model.adapter import get_adapter
from earlyexit.model.draft import check_draft_model, default_draft_model, load_draft_model
from earlyexit.model.engine import KV_STRATEGIES
from earlyexit.model.graphs import Capture, ReplayCapture, default_capture
from earlyexit.model.loading import (
    EMBEDDED_MODEL_DIR,
    ModelNotAvailableError,
    load_model,
    pythia_config,
    pythia_size,
)
from earlyexit.model.trace import TraceCounts

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
log = logging.getLogger("benchmark_decoding")


def build_baselines(adapter, args) -> list:
    """transformers' alternatives of `--baselines`, on the loaded model (and its draft)."""
    draft = fingerprint = None
    if "assisted" in args.baselines:
        device, dtype = adapter.device, adapter.dtype
        if args.random_weights:  # a random draft of the draft's shape: times the method, not its acceptance
            torch.manual_seed(args.seed + 1)
            with device:
                draft = GPTNeoXForCausalLM(pythia_config(args.draft_model, attn_implementation="sdpa"))
            draft, fingerprint = draft.to(dtype=dtype).eval(), f"random:{args.draft_model}"
        else:
            draft, fingerprint = load_draft_model(args.draft_model, dtype, str(device))
    exit_layer = None
    if "hf_early_exit" in args.baselines:
        reason = hf_early_exit_unsupported(adapter.model)
        if reason is not None:
            raise SystemExit(f"--baselines hf_early_exit: {reason}")
        exit_layer = adapter.num_layers // 2
    return [
        make_baseline(name, adapter.model, draft=draft, exit_layer=exit_layer, draft_fingerprint=fingerprint)
        for name in args.baselines
    ]


def build(args):
    """(adapter, heads, prompts, thresholds or None)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    if args.random_weights:
        torch.manual_seed(args.seed)
        # Built on the target device: initialising 1.4B parameters on the host first costs
        # tens of seconds of a GPU lease that is minutes long.
        with device:
            model = GPTNeoXForCausalLM(pythia_config(args.random_weights, attn_implementation="sdpa"))
        model = model.to(dtype=dtype).eval()
        adapter = get_adapter(model)
        heads = HeadSet(adapter, HeadSpec("shared", tuple(place_heads(adapter.num_layers, "even", n=4))))
        prompts = [torch.randint(0, 50000, (args.prompt_len,), generator=gen) for _ in range(args.prompts)]
        return adapter, heads, prompts, None
    model, tokenizer = load_model(args.model, dtype=dtype, device=str(device))
    adapter = get_adapter(model)
    head_file = args.heads or next(iter(sorted((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors"))), None)
    if head_file is None:
        raise SystemExit("no heads: pass --heads FILE (e.g. from the runner's artifacts/heads cache)")
    heads = HeadSet.load(head_file, adapter)
    _, calib, heldout = token_streams(tokenizer, args.data)
    stats = collect_head_stats(adapter, heads, calib, 128, 8192, metrics=(args.metric,), progress=False)
    targets = sorted({args.target, args.dssd_target})
    cal = calibrate(stats.scores[args.metric], stats.agree, args.metric, targets)
    prompts = prompt_set(heldout, args.prompts, args.prompt_len, args.seed)
    return adapter, heads, prompts, {t: cal.thresholds_for(t) for t in targets}


def modes(heads, thresholds, args):
    """full, layerskip, del, and with calibrated thresholds early-exit (once per KV strategy) and dssd."""
    exit_layer = heads.layers[args.layerskip_head]
    out = {"full": FullDecoding(), "layerskip": LayerSkipDecoding(heads, exit_layer, args.draft_length)}
    out["del"] = DELDecoding(heads)  # its own thresholds and lengths, learned per prompt (DEL's defaults)
    if thresholds is not None:
        policy = ThresholdPolicy(heads, args.metric, thresholds[args.target])
        for kv in args.kv:
            strategy = EarlyExitDecoding(policy, kv)
            strategy.name = "early-exit" if kv == "fill" else f"early-exit kv={kv}"
            out[strategy.name] = strategy
        dssd = ThresholdPolicy(heads, args.metric, thresholds[args.dssd_target])
        out["dssd"] = DSSDDecoding(dssd, max_draft=args.max_draft)
    return out


def weight_bytes_per_token(adapter) -> int:
    layers = sum(p.numel() * p.element_size() for p in adapter.layers.parameters())
    unembed = adapter.unembed.weight.numel() * adapter.unembed.weight.element_size()
    return layers + unembed


def graph_capture(choice: str, device: torch.device) -> Capture | None:
    if choice == "replay":
        return ReplayCapture
    if choice == "cuda" or (choice == "auto" and device.type == "cuda"):
        return default_capture(device)
    return None


def measure_modes(
    strategies, baselines, adapter, prompts, settings, args, capture: Capture | None, rounds: dict
):
    """Every mode interleaved with `full` (and transformers' baselines) under the runner's protocol.

    One `measure_interleaved` call per timing regime: eager modes with the baselines, then,
    with `capture`, the graphed modes (stored as "<mode> (graphs)"; their speedups are
    against graphed `full`, never mixed with eager). Each mode's speedup carries its paired
    bootstrap 95% interval; `full` vs HF `generate` is reported the same way. The regime's cost
    profile (`rounds`, from `profile_rounds`) is timed in rounds between the samples, as the
    runner does (bench.profile=interleaved).
    """
    results, outputs = {}, {}
    regimes = [("", [*strategies.values(), *baselines], None, rounds["eager"])]
    if capture is not None:
        regimes.append((" (graphs)", list(strategies.values()), capture, rounds["graphs"]))
    samples = args.repeats * len(prompts)
    for suffix, lineup, graphs, regime_rounds in regimes:
        between = interleaved_rounds(
            regime_rounds, samples, args.profile_repeats, blocks=args.repeats, progress=True
        )
        measured = measure_interleaved(
            lineup, adapter, prompts, settings, args.repeats, args.warmup, True, graphs, between
        )
        by_name = {m.name: m for m in measured}
        full = by_name["full"]
        for m in measured:
            name = m.name + suffix
            outputs[name], results[name] = m.ids, m.summary()
            results[name].update(speedup_interval(full, m, seed=args.seed))
        if "hf_generate" in by_name:
            vs_hf = speedup_interval(by_name["hf_generate"], full, seed=args.seed)
            results["full"]["vs_hf_generate"] = {k.replace("speedup", "ratio"): v for k, v in vs_hf.items()}
    for name, r in results.items():
        ci = f"[{r['speedup_ci_low']:.3f}-{r['speedup_ci_high']:.3f}]"
        print(f"{name:20s} {r['tpot_ms']:8.3f} ms/token  speedup {r['speedup']:.3f}x {ci}")
    return results, outputs


def measure_batch_modes(strategies, adapter, prompts, settings, args, profile) -> dict:
    """Every mode, `full` and transformers' batched `generate` at each ``--batch-sizes`` B, eager,
    interleaved batch by batch (earlyexit/measure/batches.py); per B, each against `full` at that B."""
    out = {}
    for size in args.batch_sizes:
        measured = measure_batches(
            list(strategies.values()), adapter, prompts, [settings] * len(prompts), size, args.repeats,
            args.warmup, with_hf=True, progress=True, desc=f"batch {size}",
        )  # fmt: skip
        full = measured[0]
        out[str(size)] = {
            m.name: batch_metrics(
                full,
                m,
                args.seed,
                profile,
                "full" if m.name == HF_BATCHED else m.name.split(" ")[0],
                args.metric,
            )
            for m in measured
        }
        for name, r in out[str(size)].items():
            ci = f"[{r['throughput_speedup_ci_low']:.3f}-{r['throughput_speedup_ci_high']:.3f}]"
            speed = f"{r['tokens_per_s']:9.1f} tok/s  throughput {r['throughput_speedup']:.3f}x {ci}"
            print(f"B={size:<3d} {name:20s} {speed}")
    return out


def profile_rounds(adapter, heads, prompts, args, capture: Capture | None) -> dict[str, ProfileRounds]:
    """The cost profile's rounds, eager and, with `capture`, replayed as graphs, warmed up and
    ready to be timed between the samples; KV lengths span the run."""
    name, rows, span = device_name(adapter.device), args.profile_rows, (len(prompts[0]), args.max_new_tokens)
    out = {"eager": ProfileRounds(adapter, heads, kv_span(*span), rows, None, name)}
    if capture is not None:
        kv_graphs = kv_span(*span, bucket_to=adapter.max_positions)
        out["graphs"] = ProfileRounds(adapter, heads, kv_graphs, rows, capture, name)
    for rounds in out.values():
        rounds.run(WARMUP_ROUNDS, timed=False)
    return out


def predictions(results: dict, profile_by_regime: dict, metric: str) -> None:
    """Each mode's time per token predicted from its trace, beside the measured mean; transformers'
    baselines priced as `full`'s passes are (their passes after the first token; docs/lineup.md),
    except `assisted`, whose draft model this script has no profile of."""
    for name, r in results.items():
        regime = "graphs" if name.endswith(" (graphs)") else "eager"
        mode = name.removesuffix(" (graphs)").split(" kv=")[0]
        if mode in BASELINES and "draft_trace" not in r:
            mode = "full"
        if "trace" not in r or mode not in DECIDES or regime not in profile_by_regime:
            continue
        trace = TraceCounts.from_json(r["trace"])
        pred = predict(trace, r["decode_tokens"], profile_by_regime[regime], mode, metric)
        r["predicted_ms"] = pred
        r["prediction_error"] = pred["tpot_ms"] / r["tpot_ms_mean"] - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--random-weights", metavar="PYTHIA", help="e.g. pythia-160m: its shape, random weights")
    p.add_argument("--heads", type=Path, help="head file (default: the embedded model's shipped heads)")
    p.add_argument("--data", default="stdlib", help="text for calibration and prompts")
    p.add_argument("--metric", default="entropy")
    p.add_argument("--target", type=float, default=0.8, help="calibration target for early-exit")
    p.add_argument("--dssd-target", type=float, default=0.95, help="calibration target for dssd")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="samples = prompts x repeats, modes interleaved")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--profile-repeats", type=int, default=30, help="profile rounds, timed between the samples"
    )
    p.add_argument("--profile-rows", type=int, default=8, help="rows 1..R timed in the profile")
    p.add_argument(
        "--layerskip-head", type=int, default=-1, help="index into the head layers for layerskip's E"
    )
    p.add_argument(
        "--kv",
        type=lambda text: text.split(","),
        default=["fill", "propagate", "skip"],
        help="early-exit's KV strategies, comma-separated (fill is exact; propagate, skip are lossy)",
    )
    p.add_argument(
        "--baselines",
        type=lambda text: [n for n in text.split(",") if n],
        default=["hf_generate"],
        help=f"transformers' alternatives timed beside the modes, comma-separated: {', '.join(BASELINES)}",
    )
    p.add_argument(
        "--draft-model", help="assisted's draft (default: the model's, e.g. embedded-draft, pythia-70m)"
    )
    p.add_argument("--draft-length", type=int, default=4)
    p.add_argument("--max-draft", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--graphs",
        choices=("auto", "cuda", "off", "replay"),
        default="auto",
        help="also time every mode and the profile as replayed graphs: auto = cuda on a CUDA "
        "device, else off; replay = the CPU stand-in (no speed-up; checks the graph path runs)",
    )
    p.add_argument(
        "--batch-sizes",
        type=lambda text: [int(b) for b in text.split(",") if b],
        default=[],
        help="also time full, every mode and transformers' batched generate at these batch sizes "
        "(comma-separated, e.g. 1,4,16; each needs as many --prompts), eager",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--profiles-out", type=Path, default=Path("benchmarks/profiles"))
    args = p.parse_args()

    bad_kv = [k for k in args.kv if k not in KV_STRATEGIES]
    if bad_kv:
        p.error(f"--kv {','.join(bad_kv)}: not a KV strategy; valid: {', '.join(KV_STRATEGIES)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    try:  # before any loading
        capture = graph_capture(args.graphs, torch.device(args.device))
        check_baselines(args.baselines)
        if args.batch_sizes:
            args.batch_sizes = check_batch_sizes(args.batch_sizes, args.prompts, "--batch-sizes")
            args.profile_rows = max(
                args.profile_rows, *args.batch_sizes
            )  # batched passes priced, not extrapolated
        if "assisted" in args.baselines:
            target = args.random_weights or args.model
            args.draft_model = args.draft_model or default_draft_model(target)
            if args.draft_model is None:
                p.error(f"--baselines assisted: {target} has no default draft model; pass --draft-model")
            if args.random_weights and pythia_size(args.draft_model) is None:
                p.error(f"--draft-model {args.draft_model}: random weights need a Pythia shape for the draft")
            if not args.random_weights:
                for warning in check_draft_model(args.model, args.draft_model):
                    log.warning(warning)
    except (ValueError, ModelNotAvailableError) as err:
        p.error(str(err))
    start = warn_if_busy(log)  # the machine's load as the run starts (earlyexit/measure/machine.py)
    adapter, heads, prompts, thresholds = build(args)
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens)
    strategies = modes(heads, thresholds, args)
    baselines = build_baselines(adapter, args)
    rounds = profile_rounds(adapter, heads, prompts, args, capture)
    results, outputs = measure_modes(strategies, baselines, adapter, prompts, settings, args, capture, rounds)
    end = take_reading()
    lossless = {
        n: outputs[n] == outputs["full"]
        for n in (
            "layerskip",
            "dssd",
            "del",
            *args.baselines,
            *(f"{m} (graphs)" for m in ("full", "layerskip", "dssd")),
        )
        if n in outputs
    }
    profile_by_regime = {regime: r.result() for regime, r in rounds.items()}
    predictions(results, profile_by_regime, args.metric)
    batches = {}
    if args.batch_sizes:
        batches = measure_batch_modes(
            strategies, adapter, prompts, settings, args, profile_by_regime["eager"]
        )
    # transformers' own LayerSkip, probed: on GPT-NeoX it raises (the reason is recorded).
    hf_early_exit = hf_early_exit_unsupported(adapter.model)
    synchronize(adapter.device)
    bandwidth = copy_bandwidth(adapter.device)
    wbytes = weight_bytes_per_token(adapter)
    env = environment(adapter.device, adapter.dtype)
    model_name = (args.random_weights or adapter.model_id).replace("/", "_")
    args.profiles_out.mkdir(parents=True, exist_ok=True)
    profile_files = {}
    for regime, profile in profile_by_regime.items():
        path = args.profiles_out / (
            f"{env['device']}-{model_name}-{env['dtype']}-{heads.spec.architecture}-{regime}.json"
        )
        profile.save(path)
        profile_files[regime] = str(path)
        print(profile.describe())
    record = {
        "model": args.random_weights or adapter.model_id,
        "weights": "random" if args.random_weights else "trained",
        "environment": env,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "head_layers": heads.layers,
        "thresholds": thresholds,
        "modes": results,
        "outputs_equal_full": lossless,
        # --batch-sizes: per B, every mode and transformers' batched generate against full at that B.
        "batches": batches,
        "baselines": {b.name: b.settings() for b in baselines},
        "hf_early_exit": {
            "status": "ok" if hf_early_exit is None else "unsupported",
            "reason": hf_early_exit or "",
        },
        "profiles": profile_files,
        "roofline": {
            "weight_bytes_per_token": wbytes,
            "copy_bandwidth_GBps": bandwidth / 1e9,
            "roofline_ms_per_token": 1e3 * wbytes / bandwidth,
        },
        "graphs": args.graphs if capture else f"off ({args.graphs}, device {adapter.device.type})",
        # Was the machine busy? Load at start and end, steal, full's spread (max/min, the same
        # as over its samples), an eager profile with negative times or ratios.
        "machine": {
            **machine_metrics(
                start,
                end,
                [results["full"]["tpot_ms_min"], results["full"]["tpot_ms_max"]],
                profile_by_regime["eager"].to_json(),
            ),
            "cpus": start.cpus,
        },
        "unix_time": int(time.time()),
    }
    brief = {
        name: {
            "tpot_ms": round(r["tpot_ms"], 4),
            "speedup": f"{r['speedup']:.3f} [{r['speedup_ci_low']:.3f}-{r['speedup_ci_high']:.3f}]",
            "predicted_ms": round(r["predicted_ms"]["tpot_ms"], 4) if "predicted_ms" in r else None,
            "prediction_error": round(r["prediction_error"], 3) if "prediction_error" in r else None,
        }
        for name, r in results.items()
    }
    summary = {"modes": brief, "outputs_equal_full": lossless, "roofline": record["roofline"]}
    print(json.dumps(summary, indent=1))
    if "vs_hf_generate" in results["full"]:
        h = results["full"]["vs_hf_generate"]
        print(f"full vs HF generate: {h['ratio']:.3f}x [{h['ratio_ci_low']:.3f}-{h['ratio_ci_high']:.3f}]")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{env['device']}-{model_name}-{env['dtype']}.json"
    (args.out / name).write_text(dumps_readable(record) + "\n")
    print(f"stored {args.out / name}")


if __name__ == "__main__":
    main()
