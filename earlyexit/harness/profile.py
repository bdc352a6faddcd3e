"""Component cost profile: what each piece of a decode pass costs on this device, measured.

The cost model (``earlyexit.harness.cost_model``) prices a run's pass trace with these numbers,
so a run's time per token is explained part by part and can be predicted on another device
from that device's profile. Measured per device x dtype x model shape x head architecture x
graphs on/off (``profile_identity``); stored as JSON and cached like the heads.

Measured, each as the median of repeated timed calls after untimed warm-up:
- a segment of n layers at rows 1..R and a few KV lengths (timed at n = 1 and n = L, so
  segment time = fixed + n x per-layer, both per (rows, KV length));
- the unembedding (final norm + output matmul) at rows 1..R;
- one head's matmul, and one whole exit decision per metric (head + metric + threshold + host
  read, through ``ThresholdPolicy`` exactly as decoding calls it);
- the fixed cost per engine pass: one full-depth decode step through the decode loop
  (``Run.forward`` + the greedy pick) minus its priced segment and unembedding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from earlyexit.decoding import DecodeSettings
from earlyexit.decoding.base import Run, greedy
from earlyexit.exits.confidence import METRICS
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.harness.artifacts import artifact_key
from earlyexit.harness.timing import time_call
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import Capture, GraphCache, kv_bucket

FORMAT = "earlyexit.profile/1"
# What must match between a profile and the runs it prices (device and dtype may differ:
# that is what a projection is for).
SHAPE_KEYS = ("model_shape", "head_architecture", "head_rank")


def model_shape(adapter: ModelAdapter) -> str:
    """A model's shape in one string: what a cost depends on, not which weights it holds."""
    c = adapter.config
    return (
        f"{type(adapter.model).__name__} layers={adapter.num_layers} hidden={adapter.hidden_size} "
        f"heads={c.num_attention_heads} kv_heads={adapter.num_kv_heads} "
        f"ffn={getattr(c, 'intermediate_size', 0)} vocab={adapter.vocab_size}"
    )


def profile_identity(adapter: ModelAdapter, heads: HeadSet, graphs: bool, device_name: str) -> dict:
    return {
        "format": FORMAT,
        "device": adapter.device.type,
        "device_name": device_name,
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model_shape": model_shape(adapter),
        "head_architecture": heads.spec.architecture,
        "head_rank": heads.spec.rank if heads.spec.architecture == "lowrank" else None,
        "graphs": bool(graphs),
    }


@dataclass
class CostProfile:
    identity: dict
    rows: list[int]  # 1..R
    kv_lengths: list[int]
    segment_fixed_ms: list[list[float]]  # [row index][kv index]
    layer_ms: list[list[float]]  # [row index][kv index], per layer
    unembed_ms: list[float]  # [row index]
    head_ms: float  # one head's logits for one row
    decision_ms: dict[str, float]  # metric -> head + metric + threshold + host read
    pass_fixed_ms: float  # per engine pass, outside layers, heads and unembedding

    # ------------------------------------------------------------------ prices
    def segment_ms(self, layers: int, rows: int, kv_len: int) -> float:
        """A segment of `layers` layers on `rows` rows attending over `kv_len` keys."""
        fixed = _interp2(self.rows, self.kv_lengths, self.segment_fixed_ms, rows, kv_len)
        per_layer = _interp2(self.rows, self.kv_lengths, self.layer_ms, rows, kv_len)
        return max(0.0, fixed) + layers * max(0.0, per_layer)

    def unembedding_ms(self, rows: int) -> float:
        return max(0.0, _interp1(self.rows, self.unembed_ms, rows))

    def decision_overhead_ms(self, metric: str | None) -> float:
        """What an exit decision costs beyond the head's matmul (0 for a bare head call)."""
        if metric is None:
            return 0.0
        if metric not in self.decision_ms:
            known = ", ".join(sorted(self.decision_ms))
            raise ValueError(f"profile has no decision time for metric {metric!r}; it has: {known}")
        return max(0.0, self.decision_ms[metric] - self.head_ms)

    # ------------------------------------------------------------------ identity
    @property
    def key(self) -> str:
        return artifact_key(**self.identity)

    def check_prices(self, shape: str, head_architecture: str, head_rank: int | None = None) -> None:
        """Refuse to price runs of another model shape or head architecture, naming both."""
        run = {"model_shape": shape, "head_architecture": head_architecture, "head_rank": head_rank}
        if head_architecture != "lowrank":
            run["head_rank"] = None
        bad = [k for k in SHAPE_KEYS if self.identity.get(k) != run[k]]
        if bad:
            raise ValueError(
                "profile does not match the runs: "
                + "; ".join(f"{k}: profile {self.identity.get(k)!r}, runs {run[k]!r}" for k in bad)
            )

    # ------------------------------------------------------------------ storage
    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CostProfile:
        found = data.get("identity", {}).get("format")
        if found != FORMAT:
            raise ValueError(f"not an {FORMAT} cost profile (format {found!r})")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        return cls.from_json(json.loads(Path(path).read_text()))

    def describe(self) -> str:
        """A few lines for the run's summary."""
        i = self.identity
        k = len(self.kv_lengths) // 2
        decisions = ", ".join(
            f"{m} {t:.4f} ms ({t / self.head_ms:.2f}x head)" for m, t in self.decision_ms.items()
        )
        lines = [
            f"cost profile ({i['device_name']}, {i['dtype']}, {'graphs' if i['graphs'] else 'eager'}; "
            f"key {self.key}):",
            f"  layer {self.layer_ms[0][k]:.4f} ms at 1 row, {self.layer_ms[-1][k]:.4f} ms at "
            f"{self.rows[-1]} rows (KV {self.kv_lengths[k]}); segment fixed "
            f"{self.segment_fixed_ms[0][k]:.4f} ms",
            f"  unembedding {self.unembed_ms[0]:.4f} ms; head matmul {self.head_ms:.4f} ms; per-pass fixed "
            f"{self.pass_fixed_ms:.4f} ms",
            f"  exit decision {decisions}",
        ]
        return "\n".join(lines)


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise linear, extended linearly past both ends (more rows cost more, not the same)."""
    if len(xs) == 1:
        return ys[0]
    if x <= xs[0] or x >= xs[-1]:
        i = 0 if x <= xs[0] else len(xs) - 2
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return ys[i] + slope * (x - xs[i])
    return float(np.interp(x, xs, ys))


def _interp2(rows: list[int], kvs: list[int], table: list[list[float]], r: int, kv: int) -> float:
    at_rows = [_interp1(kvs, line, kv) for line in table]
    return _interp1(rows, at_rows, r)


@torch.no_grad()
def measure_profile(
    adapter: ModelAdapter,
    heads: HeadSet,
    kv_lengths: list[int],
    max_rows: int = 8,
    graphs: Capture | None = None,
    device_name: str = "",
    repeats: int = 30,
    warmup: int = 5,
    progress: bool = True,
) -> CostProfile:
    """Measure every component (see the module docstring); `kv_lengths` should span the runs'."""
    kv_lengths = sorted({int(k) for k in kv_lengths})
    if not kv_lengths or kv_lengths[0] <= max_rows:
        raise ValueError(f"kv_lengths must exceed max_rows={max_rows}, got {kv_lengths}")
    device, L = adapter.device, adapter.num_layers
    engine = ExitEngine(adapter, exit_layers=[], graphs=graphs)
    if kv_lengths[-1] > engine.max_len:
        raise ValueError(f"KV length {kv_lengths[-1]} exceeds the context of {engine.max_len}")
    rows = list(range(1, max_rows + 1))
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(max_rows, adapter.hidden_size, generator=gen).to(device=device, dtype=adapter.dtype)
    total = len(rows) * len(kv_lengths) * 2 + len(rows) + 2 + len(METRICS)
    bar = tqdm(total=total, desc="cost profile", disable=not progress)

    def timed(fn: Callable[[], object]) -> float:
        bar.update()
        return 1e3 * time_call(fn, device, warmup, repeats)["median_s"]

    def segment(layers: int, r: int, kv: int) -> Callable[[], object]:
        positions = list(range(kv - r, kv))
        return lambda: engine._run_segment(0, layers - 1, hidden[:r], positions)

    fixed, per_layer = [], []
    with engine._attention():
        for r in rows:
            fixed.append([]), per_layer.append([])
            for kv in kv_lengths:
                one = timed(segment(1, r, kv))
                every = timed(segment(L, r, kv)) if L > 1 else one
                layer = (every - one) / (L - 1) if L > 1 else one
                per_layer[-1].append(layer)
                fixed[-1].append(one - layer)
        unembed = [timed(lambda r=r: engine._unembed(hidden[:r])) for r in rows]
    layer0 = heads.layers[0]
    head_graphs = GraphCache(graphs) if graphs is not None else None
    previous, heads.graphs = heads.graphs, head_graphs
    try:
        head = timed(lambda: heads(layer0, hidden[0]))
        # A threshold no score reaches: the common case, a head that does not fire.
        policies = {name: ThresholdPolicy(heads, name, {layer0: 1e30}) for name in METRICS}
        decisions = {name: timed(lambda p=p: p(layer0, hidden[0])) for name, p in policies.items()}
    finally:
        heads.graphs = previous
    pass_fixed = _pass_step_ms(engine, kv_lengths[len(kv_lengths) // 2], timed)
    bar.close()
    identity = profile_identity(adapter, heads, graphs is not None, device_name)
    profile = CostProfile(identity, rows, kv_lengths, fixed, per_layer, unembed, head, decisions, 0.0)
    mid = kv_lengths[len(kv_lengths) // 2]
    priced = profile.segment_ms(L, 1, _graph_kv(engine, mid)) + profile.unembedding_ms(1)
    profile.pass_fixed_ms = max(0.0, pass_fixed - priced)
    return profile


def _graph_kv(engine: ExitEngine, kv: int) -> int:
    return kv_bucket(kv, engine.max_len) if engine.graphs is not None else kv


def _pass_step_ms(engine: ExitEngine, mid: int, timed: Callable[[Callable[[], object]], float]) -> float:
    """One full-depth decode step as decoding runs it: Run.forward on one token + greedy pick."""
    prompt = torch.zeros(mid - 1, dtype=torch.long)
    run = Run(engine, prompt, DecodeSettings(max_new_tokens=1), exit_layers=[])
    engine.forward(prompt)
    token = torch.tensor([1])

    def step() -> None:
        engine.truncate(mid - 1)
        greedy(run.forward(token).logits)

    return timed(step)
