"""``bench.batch_size``: the run's batch sizes, checked before loading, measured after the batch-1
benchmark, and stored as ``batch.<B>.*`` fields (docs/batches.md).

One size, 1 (the default), is today's run: no batch stage, no batch fields. A list (or any size
above 1) adds a stage that times `full`, the mode and transformers' batched `generate` at each size
on every workload (`earlyexit.measure.batches`), and records per size and workload the throughput
and per-sequence speedups with intervals, tokens/s, FLOPs, equal outputs and the cost model's
prediction; the first workload's traces are kept so `python -m analysis.project` can price them on
another device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from earlyexit.decoding import Strategy
from earlyexit.measure.batches import (
    HF_BATCHED,
    BatchMeasured,
    batch_metrics,
    check_batch_sizes,
    measure_batches,
)
from earlyexit.measure.profile import CostProfile
from earlyexit.measure.workloads import workload_settings
from earlyexit.model.adapter import ModelAdapter
from earlyexit.tasks.workload import Workload

log = logging.getLogger(__name__)

__all__ = ["BatchRun", "batch_record", "batch_sizes", "check_batching", "measure_batch_sizes", "profile_rows"]


def batch_sizes(cfg: DictConfig) -> list[int]:
    """``bench.batch_size`` as a list (an int is one size; configs written before the key: [1])."""
    value = OmegaConf.select(cfg, "bench.batch_size", default=1)
    if value is None:
        return [1]
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]


def batching(cfg: DictConfig) -> bool:
    """Does the run have a batch stage (any size but batch 1 alone)?"""
    return batch_sizes(cfg) != [1]


def check_batching(cfg: DictConfig) -> None:
    """Refuse bad batch sizes before any model loads, naming the value and what is allowed."""
    sizes = batch_sizes(cfg)
    prompts = OmegaConf.select(cfg, "bench.limit", default=None) or cfg.bench.prompts
    check_batch_sizes(sizes, int(prompts))
    if batching(cfg) and cfg.bench.get("cuda_graphs"):
        raise ValueError(
            f"bench.batch_size={sizes} with bench.cuda_graphs=true: graphs are captured for one sequence's "
            "shapes and the batched engine does not replay them; set bench.cuda_graphs=false to time batches"
        )


def profile_rows(cfg: DictConfig, rows: int) -> int:
    """Rows the cost profile times: ``rows`` (the engine's graph row limit), or the largest batch
    when bigger, so batched passes are priced from measured rows rather than extrapolated."""
    return max(rows, *batch_sizes(cfg))


@dataclass
class BatchRun:
    """Every batch size's measurement: size -> [(workload, [full, mode?, hf_generate])]."""

    sizes: list[int]
    mode: str
    measured: dict[int, list[tuple[Workload, list[BatchMeasured]]]]


def measure_batch_sizes(
    cfg: DictConfig,
    adapter: ModelAdapter,
    workloads: list[Workload],
    strategies: list[Strategy],
    decode,
    eos: int | None,
) -> BatchRun:
    """`full` and the mode (``strategies``, full first) and transformers' batched generate at every
    batch size, on every workload's prompts, interleaved (measure/batches.py)."""
    b, sizes = cfg.bench, batch_sizes(cfg)
    out: dict[int, list] = {}
    for size in sizes:
        out[size] = []
        for workload in workloads:
            if len(workload.prompts) < size:  # a task with fewer prompts than bench.limit keeps all
                log.warning(
                    "batch %d: workload %s has only %d prompts; not measured at this size",
                    size, workload.name, len(workload.prompts),
                )  # fmt: skip
                continue
            settings = workload_settings(workload, decode, eos if workload.stop_at_eos else None)
            prompts = [torch.tensor(p.ids) for p in workload.prompts]
            names = " vs ".join([*(s.name for s in strategies), HF_BATCHED])
            measured = measure_batches(
                strategies, adapter, prompts, settings, size, b.repeats, b.warmup, with_hf=True,
                progress=True, desc=f"{workload.name} batch {size}: {names}",
            )  # fmt: skip
            out[size].append((workload, measured))
    return BatchRun(sizes, cfg.mode.name, out)


def _pooled(parts: list[BatchMeasured]) -> BatchMeasured:
    """One strategy's measurements over several workloads as one (the "overall" column)."""
    pooled = BatchMeasured(parts[0].name, parts[0].size)
    for m in parts:
        pooled.samples += m.samples
        pooled.ids += m.ids
        pooled.trace.update(m.trace)
        pooled.flops += m.flops
        pooled.drafted += m.drafted
        pooled.accepted += m.accepted
    return pooled


def batch_record(run: BatchRun, profile: CostProfile, metric: str, seed: int) -> dict[str, Any]:
    """``batch_sizes`` and ``batch.<B>.workload.<W>.*`` (W also ``overall``; the mode against full,
    and ``baseline.hf_generate.*``), plus the first workload's traces for projection."""
    out: dict[str, Any] = {"batch_sizes": run.sizes}
    for size, parts in run.measured.items():
        if not parts:  # no workload had that many prompts (warned when measured)
            continue
        columns = [(w.name, m) for w, m in parts]
        if len(parts) > 1:
            columns.append(("overall", [_pooled([m[k] for _, m in parts]) for k in range(len(parts[0][1]))]))
        for name, measured in columns:
            full, *rest = measured
            hf = rest.pop()  # transformers' batched generate is last
            mine = rest[0] if rest else full
            fields = batch_metrics(full, mine, seed, profile, run.mode, metric)
            prefix = f"batch.{size}.workload.{name}."
            out.update({prefix + k: v for k, v in fields.items()})
            hf_fields = batch_metrics(full, hf, seed, profile, "full", None)
            out.update({f"{prefix}baseline.{HF_BATCHED}.{k}": v for k, v in hf_fields.items()})
            if not fields["outputs_equal_full"] and run.mode in ("full", "layerskip", "dssd", "del"):
                log.warning("batch %d, %s: %s's outputs differ from full's (reported)", size, name, run.mode)
        full, *rest = parts[0][1]
        mine = rest[0] if len(rest) > 1 else full
        out[f"batch.{size}.trace"] = mine.trace.to_json()
        out[f"batch.{size}.full_trace"] = full.trace.to_json()
        out[f"batch.{size}.decode_tokens"] = mine.decode_tokens
        out[f"batch.{size}.full_decode_tokens"] = full.decode_tokens
    return out
