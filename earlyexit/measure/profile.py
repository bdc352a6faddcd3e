"""Component cost profile: what each piece of a decode pass costs on this device, measured.

The cost model (``earlyexit.measure.cost_model``) prices a run's pass trace with these numbers,
so a run's time per token is explained part by part and can be predicted on another device
from that device's profile. Measured per device x dtype x model shape x head architecture x
graphs on/off (``profile_identity``); stored as JSON. The runner times it between its own
timing samples (``ProfileRounds``, ``bench.profile=interleaved``) or measures it once and
caches it like the heads (``measure_profile``, ``bench.profile=cached``).

Measured in rounds that call every component once (so drift on a shared machine lands on all
of them alike), each the median over rounds after untimed warm-up rounds:
- a segment of n layers at rows 1..R and a few KV lengths: segment time = fixed + n x
  per-layer, both per (rows, KV length), from all L layers run as one segment and as L
  one-layer segments (the difference is L - 1 segments' fixed cost); both stream every
  layer's weights as decoding does, where a lone layer timed on repeat would stay in cache;
- the unembedding (final norm + output matmul) at rows 1..R, and
- one head's matmul, and one whole exit decision per metric (head + metric + threshold + host
  read, through ``ThresholdPolicy`` exactly as decoding calls it), each timed right after an
  untimed pass through every layer, as in decoding, where the layers push them out of cache;
- one layer's K/V projection of one row (``engine.kv=propagate``): all layers' projections of
  an exited token, timed after a pass through the layers, divided by the layer count;
- how the layers streamed since a layer last ran change its cost (``depth_ratio``): after a
  full-depth pass, passes through the first d layers one after another, each timed alone, per
  layer, against the same for all L layers. A pass after a full-depth pass finds the weights
  pushed out of cache; over a run of shallow passes they settle back in, pass by pass, not at
  once (measured: the second depth-2 pass after a full one saves ~10%, the eighth ~35%), so the
  ratio is kept per depth and per shallow passes before (``PassTrace.warm_layers``,
  ``previous_run``). Measured at one row, it prices the weight traffic a warm pass saves, once
  per layer whatever its rows;
- the fixed cost per engine pass, measured directly: one decode step through the decode loop
  (``Run.forward`` + the greedy pick) with the engine's segments and unembedding stubbed out, so
  what is timed is the embedding, the bookkeeping and the pick. (It was a full step minus its
  priced layers: a difference of two ~5 ms numbers, known only to ±0.3 ms on a drifting VM.)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from earlyexit.data.keys import artifact_key
from earlyexit.decoding import DecodeSettings
from earlyexit.decoding.base import Run, greedy
from earlyexit.exits.confidence import METRICS
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.json_text import dumps_readable
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.device import synchronize
from earlyexit.model.engine import ExitEngine
from earlyexit.model.graphs import Capture, GraphCache, kv_bucket
from earlyexit.model.trace import UNKNOWN_RUN

FORMAT = "earlyexit.profile/1"
# 2: + the K/V projection of engine.kv=propagate; 3: the per-pass fixed cost measured directly;
# 4: + the depth ratio; 5: the depth ratio per shallow passes before; 6: + a head call at each row
# count (batched exit checks). A cached profile of an older version is re-measured.
COMPONENTS = 6
# Shallow passes in a row the depth ratio times after a full-depth pass; a longer run is priced
# as this one.
DEPTH_RUN = 8
# Depths timed for the depth ratio: every depth up to this many layers, else this many spread
# geometrically (with the last); the others are interpolated.
DEPTH_POINTS = 12
# Untimed rounds before an interleaved profile's first timed one (runner and benchmark script).
WARMUP_ROUNDS = 3
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
        "components": COMPONENTS,
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
    projection_layer_ms: float | None = None  # one layer's K/V of one row (None: profile predates it)
    # [d - 1][k - 1]: per-layer time of a pass through the first d layers after k such passes
    # in a row (k = 1..DEPTH_RUN), over the same at full depth (1.0). None: the profile predates
    # it; one column: it was timed as runs of passes, their mean, priced alike for every k.
    depth_ratio: list[list[float]] | None = None
    # [row index]: one head call on 1..R rows at once (the batched engine decides the sequences at an
    # exit layer in one call). None: the profile predates it; a call is priced as rows x head_ms.
    head_rows_ms: list[float] | None = None

    def __post_init__(self) -> None:
        if self.depth_ratio and not isinstance(self.depth_ratio[0], list):
            self.depth_ratio = [[float(r)] for r in self.depth_ratio]

    # ------------------------------------------------------------------ prices
    def segment_ms(
        self,
        layers: int,
        rows: int,
        kv_len: int,
        reuse_depth: int = 0,
        warm_layers: int = 0,
        shallow_run: int = UNKNOWN_RUN,
    ) -> float:
        """A segment of `layers` layers on `rows` rows attending over `kv_len` keys, `warm_layers`
        of which last ran in a pass of `reuse_depth` layers, the last of `shallow_run` such passes
        in a row (``PassTrace.warm_layers``, ``previous_run``; 0: priced as after a full-depth
        pass; ``UNKNOWN_RUN``: as the longest run the profile timed)."""
        fixed = _interp2(self.rows, self.kv_lengths, self.segment_fixed_ms, rows, kv_len)
        per_layer = max(0.0, _interp2(self.rows, self.kv_lengths, self.layer_ms, rows, kv_len))
        warm = min(max(0, warm_layers), layers)
        saving = min(per_layer, self.warm_saving_ms(reuse_depth, kv_len, shallow_run))
        return max(0.0, fixed) + layers * per_layer - warm * saving

    def warm_saving_ms(self, reuse_depth: int, kv_len: int, shallow_run: int = UNKNOWN_RUN) -> float:
        """Per layer, what finding its weights in cache saves: once per layer whatever its rows.
        A ratio above 1 (noise: fewer layers in between cannot push more out) saves nothing."""
        ratios = self.depth_ratio
        if not reuse_depth or not shallow_run or ratios is None or reuse_depth >= len(ratios):
            return 0.0
        by_run = ratios[reuse_depth - 1]
        ratio = by_run[-1] if shallow_run < 0 else by_run[min(shallow_run, len(by_run)) - 1]
        one_row = max(0.0, _interp1(self.kv_lengths, self.layer_ms[0], kv_len))
        return max(0.0, 1.0 - ratio) * one_row

    def head_call_ms(self, rows: int) -> float:
        """One head call on `rows` rows at once (a batched exit check), extrapolated past R."""
        if self.head_rows_ms is None:
            return rows * self.head_ms
        return max(0.0, _interp1(self.rows, self.head_rows_ms, rows))

    def unembedding_ms(self, rows: int) -> float:
        return max(0.0, _interp1(self.rows, self.unembed_ms, rows))

    def projection_ms(self) -> float:
        """One layer's K/V projection of one exited token's state (engine.kv=propagate)."""
        if self.projection_layer_ms is None:
            raise ValueError(
                f"profile {self.key} has no K/V projection time (measured before engine.kv existed); "
                "measure it again to price engine.kv=propagate runs"
            )
        return max(0.0, self.projection_layer_ms)

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
        Path(path).write_text(dumps_readable(self.to_json()) + "\n")

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
        if self.head_rows_ms is not None:
            batched = f"{self.head_rows_ms[-1]:.4f} ms on {self.rows[-1]} rows at once"
            lines.append(f"  head call {batched} (a batched exit check)")
        if self.projection_layer_ms is not None:
            lines.append(f"  K/V projection (engine.kv=propagate) {self.projection_layer_ms:.4f} ms a layer")
        if self.depth_ratio is not None:
            depths, runs = len(self.depth_ratio), sorted({1, len(self.depth_ratio[0])})
            for k in runs:
                ratios = ", ".join(f"{by_run[k - 1]:.2f}" for by_run in self.depth_ratio)
                after = f"after {k} such pass{'es' if k > 1 else ''}" if len(runs) > 1 else "in a row"
                lines.append(f"  per-layer time by pass depth 1..{depths} {after}, x full depth: {ratios}")
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


class ProfileRounds:
    """The profile's components, timed one round at a time (every component once per round).

    Why rounds that a caller can run whenever it likes: on a shared machine a profile measured
    once, minutes before or after the decoding it prices, reads the machine in another state
    (BENCHMARKS.md: prediction errors that move together by ±20% per process). Rounds run
    between the decoding samples they price (``interleaved_rounds``, ``measure_interleaved``'s
    ``between``) see the same machine. ``measure_profile`` runs them back to back instead: the
    cached profile.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        heads: HeadSet,
        kv_lengths: list[int],
        max_rows: int = 8,
        graphs: Capture | None = None,
        device_name: str = "",
    ) -> None:
        kv_lengths = sorted({int(k) for k in kv_lengths})
        if not kv_lengths or kv_lengths[0] <= max_rows:
            raise ValueError(f"kv_lengths must exceed max_rows={max_rows}, got {kv_lengths}")
        device, L = adapter.device, adapter.num_layers
        engine = ExitEngine(adapter, exit_layers=[], graphs=graphs)
        if kv_lengths[-1] > engine.max_len:
            raise ValueError(f"KV length {kv_lengths[-1]} exceeds the context of {engine.max_len}")
        rows = list(range(1, max_rows + 1))
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(max_rows, adapter.hidden_size, generator=gen)
        hidden = hidden.to(device=device, dtype=adapter.dtype)

        def whole(r: int, kv: int) -> Callable[[], object]:
            positions = list(range(kv - r, kv))
            return lambda: engine._run_segment(0, L - 1, hidden[:r], positions)

        def split(r: int, kv: int) -> Callable[[], object]:
            positions = list(range(kv - r, kv))
            return lambda: [engine._run_segment(i, i, hidden[:r], positions) for i in range(L)]

        # All L layers as one segment and as L one-layer segments: both stream every layer's
        # weights, as decoding does (a lone layer timed on repeat would stay in cache).
        calls: dict[tuple, Callable[[], object]] = {}
        for r in rows:
            for kv in kv_lengths:
                calls[("whole", r, kv)] = whole(r, kv)
                calls[("split", r, kv)] = split(r, kv)
        # Heads and the unembedding run right after layers in decoding, their weights pushed out
        # of cache by the layers': each is timed after an untimed pass through every layer.
        mid = kv_lengths[len(kv_lengths) // 2]
        flush = whole(1, mid)
        cold: dict[tuple, Callable[[], object]] = {
            ("unembed", r): partial(engine._unembed, hidden[:r]) for r in rows
        }
        layer0 = heads.layers[0]
        cold[("head",)] = partial(heads, layer0, hidden[0])
        for r in rows[1:]:  # a batched exit check: one call on the rows of every sequence deciding
            cold[("head", r)] = partial(heads, layer0, hidden[:r])
        cold[("project",)] = partial(engine._propagate, 0, [mid - 1], hidden[:1])
        for name in METRICS:  # a threshold no score reaches: the common case, a head that does not fire
            never = ThresholdPolicy(heads, name, {layer0: 1e30})
            cold[("decision", name)] = partial(never, layer0, hidden[0])
        for key, fn in cold.items():
            calls[("flush", *key)] = flush
            calls[key] = fn
        calls[("bare step",)] = _bare_decode_step(engine, mid)
        self.depths = depth_points(L)
        for d in self.depths:  # after a full-depth pass, DEPTH_RUN + 1 passes of depth d, each timed
            calls[("depth reset", d)] = partial(engine._run_segment, 0, L - 1, hidden[:1], [mid - 1])
            shallow = partial(engine._run_segment, 0, d - 1, hidden[:1], [mid - 1])
            calls.update({("depth", d, k): shallow for k in range(DEPTH_RUN + 1)})
        self.adapter, self.heads, self.engine, self.device = adapter, heads, engine, device
        self.rows, self.kv_lengths, self.calls = rows, kv_lengths, calls
        self.identity = profile_identity(adapter, heads, graphs is not None, device_name)
        # Captured once: heads replay their graphs only while a round runs.
        self._head_graphs = GraphCache(graphs) if graphs is not None else None
        self._seconds: dict[tuple, list[float]] = {key: [] for key in calls}

    @property
    def rounds(self) -> int:
        """Timed rounds so far."""
        return len(self._seconds["bare step",])

    @torch.no_grad()
    def run(self, rounds: int = 1, timed: bool = True) -> None:
        """Call every component once per round, in a fixed order; untimed rounds warm up."""
        previous, self.heads.graphs = self.heads.graphs, self._head_graphs
        try:
            with self.engine._attention():
                for _ in range(rounds):
                    for key, fn in self.calls.items():
                        synchronize(self.device)
                        start = time.perf_counter()
                        fn()
                        synchronize(self.device)
                        if timed:
                            self._seconds[key].append(time.perf_counter() - start)
        finally:
            self.heads.graphs = previous

    def result(self) -> CostProfile:
        """The profile from the medians of the timed rounds."""
        if not self.rounds:
            raise ValueError("no timed round yet: call run() first")
        ms = {key: 1e3 * statistics.median(t) for key, t in self._seconds.items()}
        rows, kv_lengths, depths, L = self.rows, self.kv_lengths, self.depths, self.adapter.num_layers

        def segment_cost(r: int, kv: int) -> float:  # L - 1 more segments, same layers
            return max(0.0, ms["split", r, kv] - ms["whole", r, kv]) / max(1, L - 1)

        fixed = [[segment_cost(r, kv) for kv in kv_lengths] for r in rows]
        per_layer = [[(ms["whole", r, kv] - segment_cost(r, kv)) / L for kv in kv_lengths] for r in rows]
        mid = len(kv_lengths) // 2
        return CostProfile(
            self.identity,
            rows,
            kv_lengths,
            fixed,
            per_layer,
            [ms["unembed", r] for r in rows],
            ms["head",],
            {name: ms["decision", name] for name in METRICS},
            ms["bare step",],
            ms["project",] / L,
            _depth_ratio(
                depths,
                [[ms["depth", d, k] - fixed[0][mid] for k in range(1, DEPTH_RUN + 1)] for d in depths],
            ),
            [ms["head",], *(ms["head", r] for r in rows[1:])],
        )


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
    """Measure every component (see the module docstring) in `repeats` rounds back to back;
    `kv_lengths` should span the runs'."""
    rounds = ProfileRounds(adapter, heads, kv_lengths, max_rows, graphs, device_name)
    rounds.run(warmup, timed=False)
    for _ in tqdm(range(repeats), desc="cost profile", disable=not progress):
        rounds.run()
    return rounds.result()


def kv_span(prompt_len: int, max_new_tokens: int, bucket_to: int | None = None) -> list[int]:
    """KV lengths spanning a benchmark's decode steps (first, middle, last); with `bucket_to`
    (the engine's cache length), rounded up to the KV buckets a graphed pass attends over."""
    first, last = prompt_len + 1, prompt_len + max_new_tokens
    span = {first, (first + last) // 2, last}
    return sorted(span if bucket_to is None else {kv_bucket(k, bucket_to) for k in span})


def depth_points(layers: int) -> list[int]:
    """The pass depths whose cost the profile times (see ``DEPTH_POINTS``)."""
    if layers <= DEPTH_POINTS:
        return list(range(1, layers + 1))
    return sorted({int(round(d)) for d in np.geomspace(1, layers, DEPTH_POINTS)} | {layers})


def _depth_ratio(depths: list[int], ms: list[list[float]]) -> list[list[float]]:
    """Per-layer time at every depth 1..L and every run length k over that at L, interpolated
    between timed depths (`ms[i][k - 1]`: the layers of the pass at ``depths[i]`` that followed
    k passes of that depth). Noise is pooled away (``_monotone``): more layers between a layer's
    two runs cannot leave more of it in cache (non-decreasing in depth), more passes in a row
    cannot leave less (non-increasing in k)."""
    columns = []
    for k in range(len(ms[0])):
        per_layer = _monotone([row[k] / d for d, row in zip(depths, ms, strict=True)])
        full = per_layer[-1]
        columns.append([float(np.interp(d, depths, per_layer)) / full for d in range(1, depths[-1] + 1)])
    return [_monotone(list(by_run[::-1]))[::-1] for by_run in zip(*columns, strict=True)]


def _monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators). Written
    here: a dozen lines, where scipy would be one more dependency on a bare GPU box."""
    blocks: list[list[float]] = []  # [mean, size]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def _bare_decode_step(engine: ExitEngine, mid: int) -> Callable[[], None]:
    """A full-depth decode step as decoding runs it (Run.forward on one token + the greedy pick)
    with the engine's segments passing the hidden state through and its unembedding returning
    fixed logits: everything a pass costs outside its layers and unembedding."""
    prompt = torch.zeros(mid - 1, dtype=torch.long)
    run = Run(engine, prompt, DecodeSettings(max_new_tokens=1), exit_layers=[])
    engine.forward(prompt)
    token = torch.tensor([1])
    adapter = engine.adapter
    logits = torch.zeros(1, adapter.vocab_size, dtype=adapter.dtype, device=adapter.device)

    def through(start, end, hidden, positions, new_rows=None):
        return hidden

    def step() -> None:
        engine.truncate(mid - 1)
        engine._run_segment, engine._unembed = through, lambda hidden: logits  # instance stubs
        try:
            greedy(run.forward(token).logits)
        finally:
            del engine._run_segment, engine._unembed

    return step
