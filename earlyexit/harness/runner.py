"""One run: heads -> calibration -> lm-eval accuracy -> decoding benchmark -> FLOPs -> one record.

Everything cheap to check is checked before the model loads, so a typo in a sweep fails in
a second. Heads, calibrations and the full model's accuracy are cached artifacts, so a
sweep over metric, target or mode never retrains. A finished config is skipped unless
`force=true`; a failed one is recorded with its traceback and, in a multirun, the others go on.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from earlyexit.exits.head_stats import HeadStats, collect_head_stats, exit_shares
from earlyexit.exits.heads import HeadSet, HeadSpec, head_cost_ratio, place_heads
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.exits.train import TrainConfig
from earlyexit.harness.artifacts import cached_json, cached_token_streams, prepare_heads
from earlyexit.harness.batching import (
    BatchRun,
    batch_record,
    batch_sizes,
    batching,
    check_batching,
    measure_batch_sizes,
    profile_rows,
)
from earlyexit.harness.job_status import write_status
from earlyexit.harness.lineup import Lineup, build_lineup, check_lineup, divergence_margin, lineup_record
from earlyexit.harness.loggers import log_run
from earlyexit.harness.report import format_summary
from earlyexit.harness.results import ResultStore, config_key, flatten_config, make_record
from earlyexit.measure.cost_model import CATEGORIES, predict
from earlyexit.measure.head_selection import HEAD_CHOICES, SELECTING_MODES, HeadSelection, select_heads
from earlyexit.measure.machine import LoadMonitor
from earlyexit.measure.profile import (
    WARMUP_ROUNDS,
    CostProfile,
    ProfileRounds,
    kv_span,
    measure_profile,
    profile_identity,
)
from earlyexit.measure.protocol import Measured, interleaved_rounds, prompt_set, speedup_interval
from earlyexit.measure.timing import device_name, environment
from earlyexit.measure.workloads import (
    WorkloadResult,
    measure_workload,
    measured_named,
    overall_metrics,
    workload_metrics,
)
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
from earlyexit.tasks.workload import Workload
from earlyexit.tasks.workloads import build_workloads, check_workloads

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
        confirm_run_unsafe_code=bool(cfg.task.get("confirm_run_unsafe_code", False)),
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
    check_mode(cfg.mode.name, kv=kv_strategy(cfg), **mode_options(cfg))
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
    for key in ("limit", "gen_cap"):
        if OmegaConf.select(cfg, f"bench.{key}") is not None:
            _positive(cfg, f"bench.{key}")
    workloads = OmegaConf.select(cfg, "bench.workloads", default=["heldout"])
    check_workloads(list(workloads), OmegaConf.to_container(cfg.task, resolve=True))
    check_batching(cfg)
    for warning in check_lineup(cfg):  # the baselines: names, draft model found, same tokenizer, smaller
        log.warning("%s", warning)
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
    candidates = cfg.mode.get("candidate_layers") if cfg.mode.name == "del" else None
    if candidates is not None and (not candidates or set(candidates) - set(layers)):
        raise ValueError(
            f"mode.candidate_layers={list(candidates)} must be a non-empty subset of the head layers {layers}"
        )
    for key in (
        "results.path",
        "cache_dir",
    ):  # a job that cannot store what it made fails now, not at the end
        _check_writable(key, Path(str(OmegaConf.select(cfg, key))), is_file=key == "results.path")
    # Last: offline, a hub dataset is looked up in the datasets cache (seconds).
    resolve_text_source(cfg.data.source, cfg.task.get("offline"), cfg.cache_dir)  # the heads' training text


def _check_writable(key: str, path: Path, is_file: bool) -> None:
    """Refuse a path this process cannot create or write, naming the key, the path and the reason."""
    folder = path.parent if is_file else path
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if is_file and path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{key}={path} is not writable by this job (user {getpass.getuser()})")
    if not existing.is_dir():
        raise ValueError(f"{key}={path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{key}={path} cannot be written by this job (user {getpass.getuser()}): {existing} is not "
            "writable; choose a folder the job can write, e.g. on the shared filesystem"
        )


def record_run(
    cfg: DictConfig,
    output_dir: str | Path | None = None,
    multirun: bool = False,
    overrides: list[str] | None = None,
) -> dict | None:
    """Run `cfg` once and append its record to the results store; skip it if already finished.

    The job's outcome goes to ``output_dir/job_status.json`` too (harness/job_status.py), so a
    sweep can list its failed jobs at the end; the traceback of a failure to ``traceback.txt``.
    """
    requested = {"device": str(cfg.device), "dtype": str(cfg.model.dtype)}
    status = functools.partial(write_status, output_dir, overrides=overrides or [])
    try:
        cfg = resolve_runtime(cfg)
        validate(cfg)
    except ValueError as err:
        status("refused", f"{type(err).__name__}: {err}")
        if not multirun:
            raise  # a single run fails at once, before anything is loaded or stored
        return _refused(cfg, requested, err)  # a sweep records the refusal and goes on
    flat = flatten_config(cfg)
    key = config_key(flat)
    store = ResultStore(cfg.results.path)
    if not cfg.force and store.finished(key):
        log.info("config %s already finished in %s; skipping (force=true recomputes)", key, store.path)
        status("skipped")
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
        where = _save_traceback(output_dir, error) or store.path
        log.error("run failed: %s: %s (traceback in %s)", type(err).__name__, _first_line(err), where)
        status("failed", f"{type(err).__name__}: {_first_line(err)}")
    else:
        record = make_record(flat, summary["metrics"], env, per_head=summary["per_head"])
        status("ok")
    store.append(record)
    log_run(cfg, flat, record)  # after the append: a tracker never costs the local record
    if failure is not None:
        if multirun:
            return None  # the sweep goes on
        raise failure
    log.info("recorded run %s in %s", key, store.path)
    return summary


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _save_traceback(output_dir: str | Path | None, error: str) -> Path | None:
    if output_dir is None:
        return None
    path = Path(output_dir) / "traceback.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(error)
    return path


def _refused(cfg: DictConfig, requested: dict, err: ValueError) -> None:
    """A sweep job whose config is refused before loading: a failed record naming why."""
    error = f"{type(err).__name__}: {err}"
    env = {"device_requested": requested["device"], "dtype_requested": requested["dtype"]}
    ResultStore(cfg.results.path).append(make_record(flatten_config(cfg), {}, env, "failed", error))
    log.error("job refused before loading: %s", error)


@dataclass
class Loaded:
    """Stage 1: the model, its heads, and the token streams the heads were trained and checked on."""

    adapter: ModelAdapter
    tokenizer: Any
    model_id: dict
    heads: HeadSet
    heads_key: str
    calib: torch.Tensor
    heldout: torch.Tensor
    seq_len: int


@dataclass
class Calibrated:
    """Stage 2: thresholds for the run's target (heads possibly pruned) and the held-out statistics."""

    cal: Calibration
    held: HeadStats
    thresholds: dict[int, float]
    policy: ThresholdPolicy
    selection: HeadSelection | None
    shares: list[dict]
    identity: dict


@dataclass
class Benchmarked:
    """Stage 4: every workload timed (full first, then the mode, then the baselines) and the profile
    that prices the mode."""

    results: list[WorkloadResult]
    profile: CostProfile
    source: str
    rounds: int
    lineup: Lineup
    draft_profile: CostProfile | None = None  # prices the `assisted` baseline's draft passes
    batches: BatchRun | None = None  # bench.batch_size beyond 1: every size's measurement

    @property
    def primary(self) -> list[Measured]:
        """The first workload's measurement: the one the cost profile's rounds ran between."""
        return self.results[0].measured


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Heads, calibration, accuracy, decoding benchmark and FLOPs for one config; prints a summary."""
    cfg = resolve_runtime(cfg)
    validate(cfg)
    tasks = resolve_tasks_of(cfg) if cfg.task.names else []  # resolved by validate: reused, not redone
    torch.manual_seed(cfg.seed)
    graphs = default_capture(cfg.device) if cfg.bench.get("cuda_graphs") else None  # mode and full alike
    machine = LoadMonitor(log)  # warns now when other processes already hold the CPU
    machine.begin()
    log.info("stage 1/5: model and heads")
    loaded = load_stage(cfg)
    log.info("stage 2/5: calibration")
    calibrated = calibration_stage(cfg, loaded, graphs)
    log.info("stage 3/5: accuracy")
    metrics: dict[str, Any] = {}
    if tasks:
        a, policy = loaded, calibrated.policy
        metrics.update(accuracy(cfg, a.adapter, a.tokenizer, policy, a.heads_key, tasks, a.model_id))
    log.info("stage 4/5: decoding benchmark")
    bench = benchmark_stage(cfg, loaded, calibrated, graphs)
    machine.finish()
    log.info("stage 5/5: FLOPs, cost model and record")
    metrics.update(bench_metrics(cfg, loaded, calibrated, bench))
    metrics.update(machine.metrics(noise_samples(bench.primary[0]), metrics["profile"]))
    if metrics["machine_busy"] or metrics["profile_inconsistent"]:
        reason = metrics["machine_busy_reason"] or "the cost profile has negative ratios"
        log.warning("this run's timings are unreliable (%s): it is flagged in its record and figures", reason)
    at_target, heldout_fields = heldout_at_target(cfg, loaded, calibrated)
    metrics.update(heldout_fields)
    summary = run_summary(cfg, loaded, calibrated, bench, metrics, at_target)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        calibrated.cal.save(out / "calibration.json")
        bench.profile.save(out / "profile.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(format_summary(summary))
    return summary


def noise_samples(full: Measured) -> list[float]:
    """`full`'s time per token, each sample over the median of its own prompt's repeats: prompts of a
    workload legitimately differ (output length, KV size), repeats of one prompt only by noise, so
    the spread of these ratios is the machine's. With one repeat, the raw samples."""
    tpots = full.tpot_s
    if len(tpots) <= full.prompts:
        return [t for t in tpots.tolist() if math.isfinite(t)]
    out = []
    for p in range(full.prompts):
        mine = tpots[p :: full.prompts]
        mine = mine[np.isfinite(mine)]
        if len(mine) > 1:
            out.extend((mine / np.median(mine)).tolist())
    return out


def load_stage(cfg: DictConfig) -> Loaded:
    """The model, the token streams of its training text, and its heads (trained once, cached)."""
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
    return Loaded(adapter, tokenizer, model_id, heads, heads_key, calib, heldout, tcfg.seq_len)


def mode_options(cfg: DictConfig) -> dict[str, Any]:
    """The mode's settings as `check_mode`/`make_strategy` take them (absent keys: their defaults)."""
    mode = cfg.mode
    out: dict[str, Any] = {"draft_length": mode.get("draft_length", 4), "max_draft": mode.get("max_draft", 5)}
    if mode.name == "del":  # keys the config sets; the factory's defaults (DEL's) for the rest
        out.update({k: mode[k] for k in ("decay", "draft_stop", "context", "head_cost") if k in mode})
    return out


def strategy_for(cfg: DictConfig, heads: HeadSet, policy: ThresholdPolicy | None) -> Strategy:
    """The run's mode with ``policy`` (None: `full`); del chooses its layers itself (no thresholds)."""
    if policy is None:
        return make_strategy("full")
    mode = cfg.mode
    extra = {}
    if mode.name == "del" and mode.get("candidate_layers") is not None:
        extra["candidate_layers"] = list(mode.candidate_layers)
    return make_strategy(
        mode.name, heads, policy, mode.get("exit_layer"), kv=kv_strategy(cfg), **mode_options(cfg), **extra
    )


def calibration_stage(cfg: DictConfig, loaded: Loaded, graphs: Capture | None) -> Calibrated:
    """Per-head thresholds for every target (cached), the run's thresholds (heads chosen by priced
    time where asked), and the held-out statistics the summary reports."""
    adapter, heads, calib = loaded.adapter, loaded.heads, loaded.calib
    metric, target = cfg.metric.name, float(cfg.calibration.target)
    targets = calibration_targets(cfg)
    max_tokens = cfg.calibration.max_tokens
    identity = {"heads": loaded.heads_key, "metric": metric, "targets": targets, "max_tokens": max_tokens}

    def compute_calibration() -> dict:
        stats = collect_head_stats(
            adapter, heads, calib, loaded.seq_len, max_tokens, metrics=(metric,), desc="calibration"
        )
        return calibrate(stats.scores[metric], stats.agree, metric, targets).to_json()

    cal = Calibration.from_json(cached_json(cfg.cache_dir, "calibration", identity, compute_calibration))
    held = collect_head_stats(adapter, heads, loaded.heldout, loaded.seq_len, max_tokens, desc="held-out")
    thresholds = cal.thresholds_for(target)
    selection = None
    if head_choice(cfg) == "priced" and cfg.mode.name in SELECTING_MODES:
        settings = DecodeSettings(max_new_tokens=cfg.bench.max_new_tokens)
        make = functools.partial(strategy_for, cfg, heads)
        selection = choose_heads(cfg, adapter, heads, thresholds, make, calib, settings, graphs, identity)
        thresholds = selection.thresholds
        log.info("%s", selection.describe())
    policy = ThresholdPolicy(heads, metric, thresholds)
    shares = [{"target": t, **exit_shares(held, metric, cal.thresholds_for(t))} for t in targets]
    return Calibrated(cal, held, thresholds, policy, selection, shares, identity)


def run_workloads(cfg: DictConfig, loaded: Loaded) -> list[Workload]:
    """``bench.workloads``, ``bench.limit`` prompts each (default ``bench.prompts``)."""
    b = cfg.bench
    limit = b.get("limit") or b.prompts
    task = OmegaConf.to_container(cfg.task, resolve=True)
    return build_workloads(
        list(b.get("workloads") or ["heldout"]), loaded.tokenizer, loaded.heldout, int(limit),
        b.prompt_len, b.max_new_tokens, loaded.adapter.max_positions, cfg.seed,
        heldout_domain=f"held-out {cfg.data.source} text", context_tokens=b.get("context_tokens", 128),
        gen_cap=b.get("gen_cap"), task=task,
    )  # fmt: skip


def benchmark_stage(
    cfg: DictConfig, loaded: Loaded, calibrated: Calibrated, graphs: Capture | None
) -> Benchmarked:
    """`full` and the mode interleaved prompt by prompt on every workload (measure/protocol.py); the
    cost profile's rounds run between the first workload's samples, or come from the cache."""
    b, adapter, heads = cfg.bench, loaded.adapter, loaded.heads
    workloads = run_workloads(cfg, loaded)
    strategy = strategy_for(cfg, heads, calibrated.policy)
    baselines = build_lineup(cfg, adapter, heads.layers)  # before any timing: refusals come first
    lineup = [make_strategy("full")] + ([] if cfg.mode.name == "full" else [strategy])
    lineup += baselines.strategies
    rounds, between, source = None, None, profile_source(cfg)
    if source == "interleaved":  # the profile's rounds between the samples they price
        kv_lengths, name = profile_kv_lengths(cfg, adapter, graphs), device_name(adapter.device)
        rows = profile_rows(cfg, PROFILE_ROWS)
        rounds = ProfileRounds(adapter, heads, kv_lengths, rows, graphs, name)
        rounds.run(WARMUP_ROUNDS, timed=False)
        samples = b.repeats * len(workloads[0].prompts)
        between = interleaved_rounds(rounds, samples, b.profile_repeats, blocks=b.repeats, progress=True)
    decode, eos = loaded.tokenizer.decode, loaded.tokenizer.eos_token_id
    results = []
    for i, workload in enumerate(workloads):
        hook = between if i == 0 else None
        results.append(
            measure_workload(lineup, adapter, workload, decode, eos, b.repeats, b.warmup, True, graphs, hook)
        )
    if rounds is not None:
        profile = rounds.result()
        log.info("%s", profile.describe())
    else:
        profile = cost_profile(cfg, adapter, heads, graphs)
    used = rounds.rounds if rounds is not None else b.profile_repeats
    draft = draft_cost_profile(cfg, baselines.draft) if baselines.draft is not None else None
    batches = None
    if batching(cfg):  # after the batch-1 lineup: the same prompts, B at a time
        timed = lineup[: 1 if cfg.mode.name == "full" else 2]  # full and the mode (no batch-1 baselines)
        names = ", ".join(s.name for s in timed)
        log.info("batch sizes %s: %s and transformers' batched generate", batch_sizes(cfg), names)
        batches = measure_batch_sizes(cfg, adapter, workloads, timed, decode, eos)
    return Benchmarked(results, profile, source, used, baselines, draft, batches)


def _lossless_check(cfg: DictConfig, result: WorkloadResult) -> None:
    """A lossless mode whose outputs differ from full's in float32/64 is a bug, not a result."""
    base, mine = result.measured[0], measured_named(result, cfg.mode.name)
    if cfg.mode.name not in LOSSLESS or mine.ids == base.ids:
        return
    bad = next(i for i, (a, c) in enumerate(zip(base.ids, mine.ids, strict=True)) if a != c)
    where = f"{result.workload.name} prompt {bad}"
    message = f"{cfg.mode.name} is lossless but its output differs from full's on {where}"
    if cfg.model.dtype in ("float32", "float64"):
        raise RuntimeError(message)
    log.warning("%s (half precision: a near-tie may part them; docs/engine.md)", message)


def workload_record(cfg: DictConfig, bench: Benchmarked, adapter: ModelAdapter) -> dict[str, Any]:
    """``workloads`` and ``workload.<name>.*`` (and ``workload.overall.*``) for the record, then the
    baselines' (harness/lineup.py)."""
    num_layers = adapter.num_layers
    out: dict[str, Any] = {"workloads": [r.workload.name for r in bench.results]}
    for result in bench.results:
        _lossless_check(cfg, result)
        fields = workload_metrics(result, cfg.mode.name, num_layers, seed=cfg.seed)
        margin = divergence_margin(result, cfg.mode.name, fields, adapter.model)
        if margin is not None:
            fields["divergence_margin"] = margin
        out.update({f"workload.{result.workload.name}.{k}": v for k, v in fields.items()})
    overall = overall_metrics(bench.results, cfg.mode.name, num_layers, seed=cfg.seed)
    out.update({f"workload.overall.{k}": v for k, v in overall.items()})
    priced = (bench.profile, bench.draft_profile)
    out.update(lineup_record(bench.results, bench.lineup, num_layers, adapter.model, cfg.seed, *priced))
    if bench.batches is not None:
        out.update(batch_record(bench.batches, bench.profile, cfg.metric.name, cfg.seed))
    return out


def bench_metrics(cfg: DictConfig, loaded: Loaded, calibrated: Calibrated, bench: Benchmarked) -> dict:
    """Stage 5: the record's timing, prediction, FLOPs and per-workload numbers."""
    adapter, policy, metric = loaded.adapter, calibrated.policy, cfg.metric.name
    full_m, mode_m = bench.primary[0], measured_named(bench.results[0], cfg.mode.name)
    full, mode = full_m.summary(), mode_m.summary()
    if cfg.mode.name == "full":  # the baseline is the run: measured once, its speedup is 1 by definition
        comparison = {"speedup": 1.0, "speedup_ci_low": 1.0, "speedup_ci_high": 1.0, "within_noise": True}
        comparison["timing_samples"] = len(full_m.samples)
    else:
        comparison = speedup_interval(full_m, mode_m, seed=cfg.seed)
    metrics: dict[str, Any] = {k: v for k, v in mode.items() if k not in ("exit_histogram", "trace")}
    skip = ("exit_histogram", "prompts", "repeats", "trace")
    metrics.update({f"full_{k}": v for k, v in full.items() if k not in skip})
    metrics.update(comparison)
    metrics.update(predict_run(bench.profile, cfg.mode.name, metric, mode, full))
    metrics["profile_source"] = bench.source
    if cfg.mode.name in SELECTING_MODES:
        metrics["heads_choice"] = head_choice(cfg)
        metrics["heads_kept"] = list(policy.exit_layers)  # heads that can fire: calibrated and chosen
    if calibrated.selection is not None:
        metrics["heads_selection"] = calibrated.selection.to_json()
    metrics["profile_rounds"] = bench.rounds
    metrics["profile"] = bench.profile.to_json()  # the record prices again on its own (a few KB)
    metrics["trace"] = mode["trace"]
    metrics["full_trace"] = full["trace"]
    metrics["flops_ratio"] = mode["flops_per_token"] / full["flops_per_token"]
    metrics["flops_saved"] = 1 - metrics["flops_ratio"]
    metrics["exit_histogram"] = mode["exit_histogram"]
    metrics["outputs_equal_full"] = mode_m.ids == full_m.ids
    metrics.update(workload_record(cfg, bench, adapter))
    model_id = loaded.model_id  # which weights ran: a hub commit, or a local directory's content hash
    hub = "hub_id" in model_id
    metrics["model_fingerprint"] = (
        f"{model_id['hub_id']}@{model_id['commit']}" if hub else f"weights:{model_id['weights']}"
    )
    return metrics


def heldout_at_target(cfg: DictConfig, loaded: Loaded, calibrated: Calibrated) -> tuple[dict, dict[str, Any]]:
    """Held-out exit shares per head at the run's thresholds, under its KV rule, and the record's
    fields derived from them."""
    kv, metric = kv_strategy(cfg), cfg.metric.name
    out: dict[str, Any] = {}
    if kv == "fill":  # exact: the one-forward statistics hold the run's (its heads, at its target)
        at_target = exit_shares(calibrated.held, metric, calibrated.thresholds)
    else:  # hidden states depend on earlier exits: scored token by token under the rule
        under_kv = heldout_agreement(
            loaded.adapter, calibrated.policy, kv, loaded.heldout, loaded.seq_len,
            cfg.engine.kv_heldout_tokens, desc=f"held-out (kv={kv})",
        )  # fmt: skip
        at_target = under_kv.shares()
        out["heldout_tokens_under_kv"] = under_kv.tokens
        out["heldout_scoring_s"] = under_kv.seconds
    out["heldout_early_exit_share"] = 1 - at_target["final"]
    out["heldout_agreement_at_target"] = at_target["agreement"]
    return at_target, out


def run_summary(
    cfg: DictConfig,
    loaded: Loaded,
    calibrated: Calibrated,
    bench: Benchmarked,
    metrics: dict,
    at_target: dict,
) -> dict[str, Any]:
    """What the run prints and stores: the record's metrics, per-head numbers and the tables."""
    heads, held, metric = loaded.heads, calibrated.held, cfg.metric.name
    target = float(cfg.calibration.target)
    separation = separation_report(held.scores, held.agree)
    agreement = held.agreement()  # same held-out windows as train.head_agreement, no second pass
    check = heldout_check(calibrated.cal, held.scores[metric], held.agree)
    histogram = metrics["exit_histogram"]
    per_head = {
        layer: {
            "threshold": calibrated.thresholds[layer],
            "agreement": agreement[layer],
            "heldout_exit_share": at_target[f"layer_{layer}"],
            "exits_in_decoding": histogram.get(layer, 0),
            **{f"auroc_{r['metric']}": r["auroc"] for r in separation if r["layer"] == layer},
            "heldout_agreement_at_target": next(
                r["heldout_agreement"] for r in check if r["layer"] == layer and r["target"] == target
            ),
        }
        for layer in heads.layers
    }
    return {
        "model": loaded.adapter.model_id,
        "num_layers": loaded.adapter.num_layers,
        "head_layers": heads.layers,
        "architecture": heads.spec.architecture,
        "head_cost": heads.cost_per_token(),
        "full_head_cost_in_layers": head_cost_ratio(loaded.adapter),
        "metric": metric,
        "mode": cfg.mode.name,
        "target": target,
        "heldout_agreement": agreement,
        "separation": separation,
        "calibration": calibrated.cal.to_json(),
        "heldout_check": check,
        "exit_shares": calibrated.shares,
        "metrics": metrics,
        "per_head": per_head,
        "profile": f"{bench.profile.describe()}\n  {profile_origin(bench.source, bench.rounds)}",
    }


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
        "max_rows": profile_rows(cfg, PROFILE_ROWS),
        "repeats": b.profile_repeats,
    }

    def measure() -> dict:
        return measure_profile(
            adapter, heads, kv_lengths, identity["max_rows"], graphs, name, identity["repeats"]
        ).to_json()

    profile = CostProfile.from_json(cached_json(cfg.cache_dir, "profile", identity, measure))
    log.info("%s", profile.describe())
    return profile


def draft_cost_profile(cfg: DictConfig, draft: Any) -> CostProfile:
    """The draft model's component profile (cached like the target's; never interleaved: the draft's
    passes are a small share of a run). Profiles time one head too: the draft gets a shared one,
    which costs nothing to build and is never used to price its passes."""
    adapter = get_adapter(draft)
    heads = HeadSet(adapter, HeadSpec("shared", (max(0, adapter.num_layers // 2 - 1),)))
    log.info("cost profile of the draft model (prices the assisted baseline's draft passes)")
    return cost_profile(cfg, adapter, heads, None)


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
            if name.endswith("_stderr"):  # kept beside its metric (analysis draws the interval)
                out[f"acc_full.{task}.{name}"] = value
                if name in early.get(task, {}):
                    out[f"acc.{task}.{name}"] = early[task][name]
                continue
            mine = early.get(task, {}).get(name, math.nan)
            out[f"acc.{task}.{name}"] = mine
            out[f"acc_full.{task}.{name}"] = value
            out[f"acc_delta.{task}.{name}"] = mine - value
    return out
