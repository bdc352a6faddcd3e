"""One run: heads -> calibration -> lm-eval accuracy -> decoding benchmark -> FLOPs -> one record.

Everything cheap to check is checked before the model loads, so a typo in a sweep fails in
a second. Heads, calibrations and the full model's accuracy are cached artifacts, so a
sweep over metric, target or mode never retrains. A finished config is skipped unless
`force=true`; a failed one is recorded with its traceback and, in a multirun, the others go on.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from earlyexit.data.streams import contiguous_windows, text_fingerprint
from earlyexit.decoding import LOSSLESS, DecodeSettings, Strategy, check_mode, make_strategy
from earlyexit.exits.calibrate import (
    Calibration,
    calibrate,
    heldout_check,
    separation_report,
    validate_targets,
)
from earlyexit.exits.confidence import get_metric
from earlyexit.exits.head_stats import collect_head_stats, exit_shares
from earlyexit.exits.heads import HeadSet, HeadSpec, head_cost_ratio, place_heads
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.exits.train import TrainConfig
from earlyexit.harness.artifacts import cached_json, cached_token_streams, prepare_heads
from earlyexit.harness.loggers import log_run
from earlyexit.harness.report import format_summary
from earlyexit.harness.results import ResultStore, config_key, flatten_config, make_record
from earlyexit.measure.cost_model import CATEGORIES, predict
from earlyexit.measure.head_selection import HEAD_CHOICES, SELECTING_MODES, HeadSelection, select_heads
from earlyexit.measure.profile import (
    WARMUP_ROUNDS,
    CostProfile,
    ProfileRounds,
    kv_span,
    measure_profile,
    profile_identity,
)
from earlyexit.measure.protocol import interleaved_rounds, measure_interleaved, prompt_set, speedup_interval
from earlyexit.measure.timing import device_name, environment
from earlyexit.model.adapter import ModelAdapter, get_adapter
from earlyexit.model.graphs import Capture, default_capture
from earlyexit.model.loading import (
    EMBEDDED_MODEL_DIR,
    PYTHIA_SIZES,
    check_revision,
    load_model,
    model_fingerprint,
    native_dtype,
    pythia_size,
    resolve_model,
)
from earlyexit.model.runtime import DTYPES, resolve_device, resolve_dtype
from earlyexit.model.trace import TraceCounts
from earlyexit.tasks.heldout import heldout_agreement
from earlyexit.tasks.training_text import resolve_text_source

log = logging.getLogger(__name__)
PROFILE_ROWS = 8  # the engine's graph row limit; verification passes of longer drafts extrapolate
PROFILE_SOURCES = ("interleaved", "cached")


def known_num_layers(model_name: str) -> int | None:
    """Layer count without loading weights, where it is knowable offline."""
    size = pythia_size(model_name)
    if size is not None:
        return PYTHIA_SIZES[size].num_hidden_layers
    path = Path(resolve_model(model_name))
    config = path / "config.json" if path.is_dir() else EMBEDDED_MODEL_DIR / "none"
    if config.exists():
        return json.loads(config.read_text())["num_hidden_layers"]
    return None


def head_layers(cfg: DictConfig, num_layers: int) -> list[int]:
    h = cfg.heads
    return place_heads(num_layers, h.placement, list(h.layers) if h.layers else None, h.n, h.every)


def train_config(cfg: DictConfig) -> TrainConfig:
    return TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))


def calibration_targets(cfg: DictConfig) -> tuple[float, ...]:
    """The reported targets plus the one the decoding mode runs at."""
    reported = validate_targets(list(cfg.calibration.targets))
    return tuple(sorted({*reported, *validate_targets([cfg.calibration.target])}))


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1")


def resolve_runtime(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with ``device=auto`` and ``model.dtype=auto`` replaced by what they mean on
    this machine (idempotent). The record keeps the resolved values, so a CPU run and a GPU run of
    the same config are different experiments, and the requested ones under ``env.*_requested``."""
    device = resolve_device(cfg.device)
    revision = cfg.model.get("revision")
    dtype = resolve_dtype(cfg.model.dtype, device, lambda: native_dtype(cfg.model.name, revision))
    out = cfg.copy()
    with open_dict(out):
        out.device = device
        out.model.dtype = dtype
    return out


def resolve_tasks_of(cfg: DictConfig) -> list:
    """The run's lm-eval tasks, each resolved to where its data comes from (fails before loading)."""
    from earlyexit.tasks.lm_eval_tasks import validate_tasks  # lm-eval is slow to import: only when needed

    include = cfg.task.get("include_path")
    include = OmegaConf.to_container(include) if OmegaConf.is_list(include) else include
    return validate_tasks(
        list(cfg.task.names),
        data_dir=cfg.task.get("data_dir"),
        include_path=include,
        offline=cfg.task.get("offline"),
    )


def kv_strategy(cfg: DictConfig) -> str:
    """``engine.kv``; configs written before the key existed mean the exact ``fill``."""
    return str(OmegaConf.select(cfg, "engine.kv", default="fill"))


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any model is loaded, naming the key, the value and what is allowed."""
    cfg = resolve_runtime(cfg)  # device and model.dtype: known, available, and runnable together
    check_revision(cfg.model.name, cfg.model.get("revision"))
    get_metric(cfg.metric.name)
    HeadSpec(cfg.heads.architecture, (0,))
    try:
        calibration_targets(cfg)
    except ValueError as err:
        raise ValueError(f"calibration: {err}") from None
    train_config(cfg).validate()
    check_mode(cfg.mode.name, cfg.mode.get("draft_length", 4), cfg.mode.get("max_draft", 5), kv_strategy(cfg))
    bench_keys = ("prompts", "prompt_len", "max_new_tokens", "repeats", "profile_repeats")
    _positive(cfg, *(f"bench.{k}" for k in bench_keys))
    source = profile_source(cfg)
    if source not in PROFILE_SOURCES:
        valid = ", ".join(PROFILE_SOURCES)
        raise ValueError(f"bench.profile={source!r} is not a profile source; valid: {valid}")
    if kv_strategy(cfg) != "fill":
        _positive(cfg, "engine.kv_heldout_tokens")
    choice = head_choice(cfg)
    if choice not in HEAD_CHOICES:
        raise ValueError(
            f"calibration.heads={choice!r} is not a head choice; valid: {', '.join(HEAD_CHOICES)}"
        )
    if choice == "priced":
        _positive(cfg, "calibration.select_prompts")
    if cfg.bench.get("cuda_graphs"):
        try:
            default_capture(cfg.device)
        except ValueError as err:
            raise ValueError(f"bench.cuda_graphs=true with device={cfg.device}: {err}") from None
    if cfg.task.names:
        resolve_tasks_of(cfg)
    # Placement names and counts are checked even when the layer count is not known offline
    # (a hub model not loaded yet); layer bounds are checked whenever it is.
    num_layers = known_num_layers(cfg.model.name)
    try:
        layers = head_layers(cfg, num_layers or 1_000_000)
    except ValueError as err:
        raise ValueError(f"heads: {err}") from None
    exit_layer = cfg.mode.get("exit_layer")
    if cfg.mode.name == "layerskip" and exit_layer is not None and exit_layer not in layers:
        raise ValueError(f"mode.exit_layer={exit_layer} is not a head layer; head layers: {layers}")
    # Last: offline, a hub dataset is looked up in the datasets cache (seconds).
    resolve_text_source(cfg.data.source, cfg.task.get("offline"), cfg.cache_dir)  # the heads' training text


def record_run(cfg: DictConfig, output_dir: str | Path | None = None, multirun: bool = False) -> dict | None:
    """Run `cfg` once and append its record to the results store; skip it if already finished."""
    requested = {"device": str(cfg.device), "dtype": str(cfg.model.dtype)}
    try:
        cfg = resolve_runtime(cfg)
        validate(cfg)
    except ValueError as err:
        if not multirun:
            raise  # a single run fails at once, before anything is loaded or stored
        return _refused(cfg, requested, err)  # a sweep records the refusal and goes on
    flat = flatten_config(cfg)
    key = config_key(flat)
    store = ResultStore(cfg.results.path)
    if not cfg.force and store.finished(key):
        log.info("config %s already finished in %s; skipping (force=true recomputes)", key, store.path)
        return None
    env = environment(cfg.device, DTYPES[cfg.model.dtype])
    env.update({"device_requested": requested["device"], "dtype_requested": requested["dtype"]})
    log.info(
        "device=%s (requested %s), model.dtype=%s (requested %s)",
        cfg.device,
        requested["device"],
        cfg.model.dtype,
        requested["dtype"],
    )
    summary, failure = None, None
    try:
        summary = run(cfg, output_dir)
    except Exception as err:
        failure = err
        error = traceback.format_exc()
        record = make_record(flat, {}, env, status="failed", error=error)
        log.error("run failed: %s: %s\n(traceback recorded in %s)", type(err).__name__, err, store.path)
    else:
        record = make_record(flat, summary["metrics"], env, per_head=summary["per_head"])
    store.append(record)
    log_run(cfg, flat, record)  # after the append: a tracker never costs the local record
    if failure is not None:
        if multirun:
            return None  # the sweep goes on
        raise failure
    log.info("recorded run %s in %s", key, store.path)
    return summary


def _refused(cfg: DictConfig, requested: dict, err: ValueError) -> None:
    """A sweep job whose config is refused before loading: a failed record naming why."""
    error = f"{type(err).__name__}: {err}"
    env = {"device_requested": requested["device"], "dtype_requested": requested["dtype"]}
    ResultStore(cfg.results.path).append(make_record(flatten_config(cfg), {}, env, "failed", error))
    log.error("job refused before loading: %s", error)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Heads, calibration, accuracy, decoding benchmark and FLOPs for one config; prints a summary."""
    cfg = resolve_runtime(cfg)
    validate(cfg)
    tasks = resolve_tasks_of(cfg) if cfg.task.names else []  # resolved by validate: reused, not redone
    torch.manual_seed(cfg.seed)
    log.info("stage 1/5: model and heads")
    revision = cfg.model.get("revision")
    model, tokenizer = load_model(
        cfg.model.name, dtype=DTYPES[cfg.model.dtype], device=cfg.device, revision=revision
    )
    model_id = model_fingerprint(cfg.model.name, revision)
    adapter = get_adapter(model)
    spec = HeadSpec(cfg.heads.architecture, tuple(head_layers(cfg, adapter.num_layers)), cfg.heads.rank)
    tcfg = train_config(cfg)
    source, fraction = cfg.data.source, cfg.data.heldout_fraction
    text = text_fingerprint(source)
    train, calib, heldout = cached_token_streams(tokenizer, source, fraction, cfg.cache_dir, text=text)
    data_id = {"text": text, "heldout_fraction": fraction}
    about = {"model": cfg.model.name, "source": source}
    heads, heads_key = prepare_heads(adapter, spec, tcfg, data_id, train, cfg.cache_dir, model_id, about)

    log.info("stage 2/5: calibration")
    metric, target = cfg.metric.name, float(cfg.calibration.target)
    targets = calibration_targets(cfg)
    seq_len, max_tokens = tcfg.seq_len, cfg.calibration.max_tokens
    cal_identity = {"heads": heads_key, "metric": metric, "targets": targets, "max_tokens": max_tokens}

    def compute_calibration() -> dict:
        stats = collect_head_stats(
            adapter, heads, calib, seq_len, max_tokens, metrics=(metric,), desc="calibration"
        )
        return calibrate(stats.scores[metric], stats.agree, metric, targets).to_json()

    cal = Calibration.from_json(cached_json(cfg.cache_dir, "calibration", cal_identity, compute_calibration))
    held = collect_head_stats(adapter, heads, heldout, seq_len, max_tokens, desc="held-out")
    thresholds = cal.thresholds_for(target)
    b = cfg.bench
    settings = DecodeSettings(max_new_tokens=b.max_new_tokens)
    graphs = default_capture(cfg.device) if b.get("cuda_graphs") else None  # mode and full alike

    def strategy_for(policy: ThresholdPolicy | None):
        if policy is None:
            return make_strategy("full")
        mode = cfg.mode
        return make_strategy(
            mode.name, heads, policy, mode.get("exit_layer"), mode.get("draft_length", 4),
            mode.get("max_draft", 5), kv_strategy(cfg),
        )  # fmt: skip

    selection = None
    if head_choice(cfg) == "priced" and cfg.mode.name in SELECTING_MODES:
        selection = choose_heads(
            cfg, adapter, heads, thresholds, strategy_for, calib, settings, graphs, cal_identity
        )
        thresholds = selection.thresholds
        log.info("%s", selection.describe())
    policy = ThresholdPolicy(heads, metric, thresholds)
    shares = [{"target": t, **exit_shares(held, metric, cal.thresholds_for(t))} for t in targets]

    log.info("stage 3/5: accuracy")
    metrics: dict[str, Any] = {}
    if tasks:
        metrics.update(accuracy(cfg, adapter, tokenizer, policy, heads_key, tasks, model_id))

    log.info("stage 4/5: decoding benchmark")
    strategy = strategy_for(policy)
    prompts = prompt_set(heldout, b.prompts, b.prompt_len, cfg.seed)
    # One protocol for every run: `full` and the mode interleaved prompt by prompt (measure/protocol.py).
    lineup = [make_strategy("full")] + ([] if cfg.mode.name == "full" else [strategy])
    rounds, between, source = None, None, profile_source(cfg)
    if source == "interleaved":  # the profile's rounds between the samples they price
        kv_lengths, name = profile_kv_lengths(cfg, adapter, graphs), device_name(adapter.device)
        rounds = ProfileRounds(adapter, heads, kv_lengths, PROFILE_ROWS, graphs, name)
        rounds.run(WARMUP_ROUNDS, timed=False)
        samples = b.repeats * len(prompts)
        between = interleaved_rounds(rounds, samples, b.profile_repeats, blocks=b.repeats, progress=True)
    measured = measure_interleaved(
        lineup, adapter, prompts, settings, b.repeats, b.warmup, True, graphs, between
    )
    full_ids, full = measured[0].ids, measured[0].summary()
    ids, mode = measured[-1].ids, measured[-1].summary()
    if cfg.mode.name == "full":  # the baseline is the run: measured once, its speedup is 1 by definition
        comparison = {"speedup": 1.0, "speedup_ci_low": 1.0, "speedup_ci_high": 1.0, "within_noise": True}
        comparison["timing_samples"] = len(measured[0].samples)
    else:
        comparison = speedup_interval(measured[0], measured[1], seed=cfg.seed)

    log.info("stage 5/5: FLOPs, cost model and record")
    if rounds is not None:
        profile = rounds.result()
        log.info("%s", profile.describe())
    else:
        profile = cost_profile(cfg, adapter, heads, graphs)
    prediction = predict_run(profile, cfg.mode.name, metric, mode, full)
    metrics.update({k: v for k, v in mode.items() if k not in ("exit_histogram", "trace")})
    metrics.update(
        {
            f"full_{k}": v
            for k, v in full.items()
            if k not in ("exit_histogram", "prompts", "repeats", "trace")
        }
    )
    metrics.update(comparison)
    metrics.update(prediction)
    metrics["profile_source"] = source
    if cfg.mode.name in SELECTING_MODES:
        metrics["heads_choice"] = head_choice(cfg)
        metrics["heads_kept"] = list(policy.exit_layers)  # heads that can fire: calibrated and chosen
    if selection is not None:
        metrics["heads_selection"] = selection.to_json()
    metrics["profile_rounds"] = rounds.rounds if rounds is not None else b.profile_repeats
    metrics["profile"] = profile.to_json()  # the record prices again on its own (a few KB)
    metrics["trace"] = mode["trace"]
    metrics["full_trace"] = full["trace"]
    metrics["flops_ratio"] = mode["flops_per_token"] / full["flops_per_token"]
    metrics["flops_saved"] = 1 - metrics["flops_ratio"]
    metrics["exit_histogram"] = mode["exit_histogram"]
    metrics["outputs_equal_full"] = ids == full_ids
    # Which weights ran: a hub model's resolved commit, or a local directory's content hash.
    metrics["model_fingerprint"] = (
        f"{model_id['hub_id']}@{model_id['commit']}"
        if "hub_id" in model_id
        else f"weights:{model_id['weights']}"
    )
    kv = kv_strategy(cfg)
    if kv == "fill":  # exact: the one-forward statistics hold the run's (its heads, at its target)
        at_target = exit_shares(held, metric, thresholds)
    else:  # hidden states depend on earlier exits: scored token by token under the rule
        under_kv = heldout_agreement(
            adapter, policy, kv, heldout, seq_len, cfg.engine.kv_heldout_tokens, desc=f"held-out (kv={kv})"
        )
        at_target = under_kv.shares()
        metrics["heldout_tokens_under_kv"] = under_kv.tokens
        metrics["heldout_scoring_s"] = under_kv.seconds
    metrics["heldout_early_exit_share"] = 1 - at_target["final"]
    metrics["heldout_agreement_at_target"] = at_target["agreement"]
    separation = separation_report(held.scores, held.agree)
    agreement = held.agreement()  # same held-out windows as train.head_agreement, no second pass
    check = heldout_check(cal, held.scores[metric], held.agree)
    per_head = {
        layer: {
            "threshold": thresholds[layer],
            "agreement": agreement[layer],
            "heldout_exit_share": at_target[f"layer_{layer}"],
            "exits_in_decoding": mode["exit_histogram"].get(layer, 0),
            **{f"auroc_{r['metric']}": r["auroc"] for r in separation if r["layer"] == layer},
            "heldout_agreement_at_target": next(
                r["heldout_agreement"] for r in check if r["layer"] == layer and r["target"] == target
            ),
        }
        for layer in heads.layers
    }
    summary = {
        "model": adapter.model_id,
        "num_layers": adapter.num_layers,
        "head_layers": heads.layers,
        "architecture": heads.spec.architecture,
        "head_cost": heads.cost_per_token(),
        "full_head_cost_in_layers": head_cost_ratio(adapter),
        "metric": metric,
        "mode": cfg.mode.name,
        "target": target,
        "heldout_agreement": agreement,
        "separation": separation,
        "calibration": cal.to_json(),
        "heldout_check": check,
        "exit_shares": shares,
        "metrics": metrics,
        "per_head": per_head,
        "profile": f"{profile.describe()}\n  {profile_origin(source, metrics['profile_rounds'])}",
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cal.save(out / "calibration.json")
        profile.save(out / "profile.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(format_summary(summary))
    return summary


def head_choice(cfg: DictConfig) -> str:
    """``calibration.heads``; configs written before the key existed used every head."""
    return str(OmegaConf.select(cfg, "calibration.heads", default="all"))


def choose_heads(
    cfg: DictConfig,
    adapter: ModelAdapter,
    heads: HeadSet,
    thresholds: dict[int, float],
    strategy_for: Callable[[ThresholdPolicy | None], Strategy],
    calib: torch.Tensor,
    settings: DecodeSettings,
    graphs: Capture | None,
    cal_identity: dict,
) -> HeadSelection:
    """The heads that lower this device's priced time per token (cached like the calibration).

    Priced by the cached profile (the interleaved one is timed later, during the benchmark) on
    calibration prompts beyond the calibrated tokens, so the benchmark's held-out prompts play
    no part in the choice.
    """
    profile = cost_profile(cfg, adapter, heads, graphs)
    b, n = cfg.bench, int(cfg.calibration.select_prompts)
    prompts, fitted = selection_prompts(
        calib, cfg.train.seq_len, cfg.calibration.max_tokens, n, b.prompt_len, cfg.seed
    )
    identity = {
        **cal_identity,
        "thresholds": {str(k): str(v) for k, v in sorted(thresholds.items())},
        "mode": cfg.mode.name,
        "max_draft": cfg.mode.get("max_draft", 5),
        "kv": kv_strategy(cfg),
        "profile": profile.key,
        "prompts": n,
        "prompts_after": fitted,
        "prompt_len": b.prompt_len,
        "max_new_tokens": b.max_new_tokens,
        "seed": cfg.seed,
    }

    def compute() -> dict:
        return select_heads(
            adapter, heads, cfg.metric.name, thresholds, strategy_for, prompts, settings, profile,
            cfg.mode.name, graphs,
        ).to_json()  # fmt: skip

    return HeadSelection.from_json(cached_json(cfg.cache_dir, "head_selection", identity, compute))


def selection_prompts(
    calib: torch.Tensor, seq_len: int, max_tokens: int, n: int, prompt_len: int, seed: int
) -> tuple[list[torch.Tensor], int]:
    """Head selection's prompts and the token they start after: calibration text the thresholds
    were not fit on. On the tokens they were fit on, the loosest threshold that still meets a
    high target fires more often than on new text (1.6x at the first head at target 0.95 on the
    embedded model), so heads would look more profitable than they are."""
    fitted = contiguous_windows(calib, seq_len, max_tokens).numel()
    if len(calib) - fitted > prompt_len:
        return prompt_set(calib[fitted:], n, prompt_len, seed), fitted
    log.warning(
        "head selection: only %d calibration tokens beyond the %d calibrated ones; its prompts "
        "overlap the calibrated tokens, where exit rates are optimistic at high targets",
        len(calib) - fitted,
        fitted,
    )
    return prompt_set(calib, n, prompt_len, seed), 0


def profile_source(cfg: DictConfig) -> str:
    """``bench.profile``; configs written before the key existed used the cached profile."""
    return str(OmegaConf.select(cfg, "bench.profile", default="cached"))


def profile_origin(source: str, rounds: int) -> str:
    """Where the run's profile came from, for its summary."""
    if source == "interleaved":
        return f"timed in {rounds} rounds between this run's samples (bench.profile=interleaved)"
    return f"cached: measured once on this device in {rounds} rounds (bench.profile=cached)"


def profile_kv_lengths(cfg: DictConfig, adapter, graphs) -> list[int]:
    """KV lengths that span the benchmark's (a graphed pass attends over its KV bucket)."""
    bucket_to = adapter.max_positions if graphs is not None else None
    return kv_span(cfg.bench.prompt_len, cfg.bench.max_new_tokens, bucket_to)


def cost_profile(cfg: DictConfig, adapter, heads, graphs) -> CostProfile:
    """This device's component profile for the model shape and head architecture (cached).

    Rows go up to the engine's graph row limit, beyond which the profile extrapolates.
    """
    b = cfg.bench
    kv_lengths = profile_kv_lengths(cfg, adapter, graphs)
    name = device_name(adapter.device)
    identity = {
        **profile_identity(adapter, heads, graphs is not None, name),
        "kv_lengths": kv_lengths,
        "max_rows": PROFILE_ROWS,
        "repeats": b.profile_repeats,
    }

    def measure() -> dict:
        return measure_profile(
            adapter, heads, kv_lengths, PROFILE_ROWS, graphs, name, identity["repeats"]
        ).to_json()

    profile = CostProfile.from_json(cached_json(cfg.cache_dir, "profile", identity, measure))
    log.info("%s", profile.describe())
    return profile


def predict_run(profile: CostProfile, mode_name: str, metric: str, mode: dict, full: dict) -> dict:
    """Predicted time per token of the mode and of full, beside the measured (mean) ones."""

    def one(summary: dict, name: str) -> dict:
        trace = TraceCounts.from_json(summary["trace"])
        return predict(trace, summary["decode_tokens"], profile, name, metric)

    mine, base = one(mode, mode_name), one(full, "full")
    return {
        "predicted_tpot_ms": mine["tpot_ms"],
        "prediction_error": mine["tpot_ms"] / mode["tpot_ms_mean"] - 1,
        "full_predicted_tpot_ms": base["tpot_ms"],
        "full_prediction_error": base["tpot_ms"] / full["tpot_ms_mean"] - 1,
        "predicted_speedup": base["tpot_ms"] / mine["tpot_ms"],
        **{f"time_ms.{k}": mine[k] for k in CATEGORIES},
        **{f"full_time_ms.{k}": base[k] for k in CATEGORIES},
        "profile_key": profile.key,
        "model_shape": profile.identity["model_shape"],
    }


def accuracy(
    cfg: DictConfig,
    adapter,
    tokenizer,
    policy: ThresholdPolicy,
    heads_key: str,
    tasks: list | None = None,
    model_id: dict | None = None,
) -> dict[str, Any]:
    """lm-eval scores of the early-exit model and of the full model (cached), and their delta.

    Lossless modes (full, layerskip, dssd) produce the full model's tokens, proven in the
    tests, so their accuracy is the full model's and is not evaluated twice. The cache key holds
    the model's content identity and each task's YAML and data content, not their names.
    Where each task's data came from is recorded as ``task_source.<task>`` / ``task_split.<task>``.
    """
    from earlyexit.tasks.lm_eval_model import EarlyExitLM  # lm-eval is slow to import
    from earlyexit.tasks.lm_eval_tasks import evaluate, task_identity

    tasks = tasks if tasks is not None else resolve_tasks_of(cfg)
    limit = cfg.task.limit
    model_id = model_id or {"id": adapter.model_id}

    def full_scores() -> dict:
        return evaluate(EarlyExitLM(adapter, tokenizer, None), tasks, limit, cache_dir=cfg.cache_dir)

    identity = {"model": model_id, "tasks": task_identity(tasks, cfg.cache_dir), "limit": limit}
    full = cached_json(cfg.cache_dir, "accuracy", identity, full_scores)
    if cfg.mode.name in LOSSLESS:
        early = full
    else:
        lm = EarlyExitLM(adapter, tokenizer, policy, kv=kv_strategy(cfg))  # propagate/skip: token by token
        early = evaluate(lm, tasks, limit, cache_dir=cfg.cache_dir)
    out: dict[str, Any] = {}
    for task in tasks:
        out[f"task_source.{task.name}"] = task.source
        out[f"task_split.{task.name}"] = task.split
    for task, scores in full.items():
        for name, value in scores.items():
            if name.endswith("_stderr"):
                continue
            mine = early.get(task, {}).get(name, math.nan)
            out[f"acc.{task}.{name}"] = mine
            out[f"acc_full.{task}.{name}"] = value
            out[f"acc_delta.{task}.{name}"] = mine - value
    return out
