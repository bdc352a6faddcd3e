"""The layer loop with exits, over an exact KV cache.

Why not `model.forward`: after a token exits at layer k, layers > k hold no K/V for it,
and transformers' cache reports one length for all layers and builds masks from it, so
the stock forward is wrong in that ragged state. This loop calls the model's own layer
modules instead, with explicit positions and an explicit position-based causal mask.

Exits happen only at segment boundaries (the exit layers). A token that exits at layer
k stays *pending*: its layer-k hidden state is kept, and it joins the rows of the next
pass at layer k+1, so its deeper K/V are written before any later token attends to them
(DESIGN.md, "KV cache with exits"). The pass that carries pending tokens to full depth
also yields their final logits, which is exactly what speculative verification needs.

That is ``kv="fill"``, exact and the default. Two published alternatives give up exactness
for work (DESIGN.md, "What happens to an exited token's KV"), for the ``early-exit`` mode only:
``propagate`` (CALM) writes an exited token's deeper K/V from its exit state through each skipped
layer's input norm and K/V projections, with no attention or MLP; ``skip`` writes none, and
later tokens attend at each layer only to the tokens that reached it. Under ``skip`` each layer
keeps its entries packed in position order (slot != position): a single decode row attends over
exactly its layer's entries with no mask, and truncation is not defined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.flops import attention_flops, linear_flops, unembed_flops
from earlyexit.model.graphs import Capture, GraphCache, kv_bucket
from earlyexit.model.kv_cache import StaticKVCache
from earlyexit.model.trace import KVProjection, PassTrace, SegmentRun

# On CUDA, SDPA may pick cuDNN attention, which builds a new plan for every KV length
# (45-61 ms per step, DESIGN.md); the memory-efficient kernel takes our boolean mask and
# does not. Math stays as the fallback for shapes it cannot take.
CUDA_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

KV_STRATEGIES = ("fill", "propagate", "skip")


MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take the engine's explicit mask


def _mask_fill(adapter: ModelAdapter) -> float | None:
    """None for SDPA (boolean masks); eager attention adds the mask to its scores, so masked keys
    get the dtype's minimum. Others (flash attention, flex) take no arbitrary mask: refused, since
    the engine's ragged K/V and verification rows need one (a bool added as 0/1 gave wrong tokens)."""
    impl = getattr(adapter.config, "_attn_implementation", None) or "sdpa"
    if impl not in MASKED_ATTENTION:
        raise ValueError(
            f"the engine needs explicit attention masks, which attn_implementation={impl!r} does not take; "
            f"load the model with attn_implementation='sdpa' (earlyexit's load_model does) or 'eager'"
        )
    return torch.finfo(adapter.dtype).min if impl == "eager" else None


def attention_mask(allowed: torch.Tensor, fill: float | None, dtype: torch.dtype) -> torch.Tensor:
    """SDPA takes the boolean mask as is (``fill`` None); eager attention adds its mask to the scores,
    so it gets 0 where a key may be attended and ``fill`` (the dtype's minimum) elsewhere."""
    if fill is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, fill)


def check_kv_strategy(kv: str) -> None:
    if kv not in KV_STRATEGIES:
        raise ValueError(f"unknown KV strategy {kv!r}; valid: {', '.join(KV_STRATEGIES)}")


# Called with (exit layer, hidden state of the newest token after that layer); returns
# the logits to emit if the token exits there, or None to continue deeper.
ExitCheck = Callable[[int, torch.Tensor], "torch.Tensor | None"]

# Called with (exit layer, positions of the pass's rows there, their hidden states [rows, d]) after
# every segment that ends at an exit layer, before the exit check: an opt-in read of the states a
# pass computes anyway (DEL's shadow tokens, decoding/dynamic_exit.py). Must not modify them.
Tap = Callable[[int, list[int], torch.Tensor], None]


@dataclass
class Pending:
    """A token whose layers above `layer` have not been computed yet."""

    position: int
    layer: int
    hidden: torch.Tensor  # [d], output of layer `layer`


@dataclass
class StepOutput:
    """Result of one engine pass."""

    logits: torch.Tensor  # [V] logits for the newest token (head or final)
    exit_layer: int  # layer whose output produced `logits`; num_layers - 1 for full depth
    final_logits: torch.Tensor | None = None  # [rows, V] when the pass reached full depth
    final_positions: list[int] = field(default_factory=list)  # positions of those rows
    trace: PassTrace = field(default_factory=PassTrace)  # what the pass computed, as counts
    flops_of: Callable[[PassTrace], int] | None = field(default=None, repr=False)

    @property
    def flops(self) -> int:
        """Analytic FLOPs of this pass (layers, attention, unembedding; heads count their own),
        derived from the trace when asked, not inside the decode loop."""
        return self.flops_of(self.trace) if self.flops_of is not None else 0

    @property
    def layer_rows(self) -> int:
        """Sum over computed layers of the rows each processed (cost accounting)."""
        return self.trace.layer_rows


class ExitEngine:
    """Runs one sequence (batch 1) through the model segment by segment, with exits."""

    def __init__(
        self,
        adapter: ModelAdapter,
        exit_layers: Sequence[int] = (),
        max_len: int | None = None,
        static_kv_len: bool = False,
        graphs: Capture | None = None,
        max_graph_rows: int = 8,
        kv: str = "fill",
    ) -> None:
        check_kv_strategy(kv)
        num_layers = adapter.num_layers
        bad = [k for k in exit_layers if not 0 <= k < num_layers - 1]
        if bad:
            raise ValueError(
                f"exit layers {bad} outside [0, {num_layers - 1}) for a {num_layers}-layer model"
            )
        self.adapter = adapter
        self.exit_layers = sorted({int(k) for k in exit_layers})
        bounds = [*self.exit_layers, num_layers - 1]
        self.segments = list(zip([0, *[b + 1 for b in self.exit_layers]], bounds, strict=True))
        self.max_len = min(max_len or adapter.max_positions, adapter.max_positions)
        # static_kv_len attends over the whole buffer (fixed shapes, CUDA-graph friendly);
        # otherwise over the filled prefix only (less work on CPU).
        self.static_kv_len = static_kv_len
        self.cache = StaticKVCache(
            num_layers, adapter.num_kv_heads, adapter.head_dim, self.max_len, adapter.dtype, adapter.device
        )
        self.length = 0
        self.pending: list[Pending] = []
        self.kv = kv
        self._layer_len = [0] * num_layers  # kv=skip: entries each layer holds (packed slots)
        self._projectors: list | None = None  # kv=propagate: each layer's K/V projection, built once
        # Segments of up to `max_graph_rows` rows replay captured graphs (decode steps and
        # verification passes); prefill and larger catch-up passes run eagerly.
        self.graphs = GraphCache(graphs) if graphs is not None else None
        self.max_graph_rows = max_graph_rows
        self._device = adapter.device  # a property through the output embedding: ~8 us a call
        self._all_positions = torch.arange(self.max_len, device=self._device)
        self._rope = _rotary_table(adapter, self._all_positions)
        self._attention = (
            partial(sdpa_kernel, CUDA_ATTENTION) if adapter.device.type == "cuda" else nullcontext
        )
        self._mask_fill = _mask_fill(adapter)
        # A pass's FLOPs follow from its trace, once per pass: prefix sums of the layers' matmul
        # FLOPs, and attention FLOPs per key per row per layer.
        layer_flops = [linear_flops(layer) for layer in adapter.layers]
        self._flops_prefix = [sum(layer_flops[:i]) for i in range(num_layers + 1)]
        self._attention_flops_per_key = attention_flops(adapter, 1)
        self._unembed_flops = unembed_flops(adapter)
        self._projection_flops = 2 * adapter.hidden_size * 2 * adapter.num_kv_heads * adapter.head_dim
        self._trace = PassTrace()
        self._last_depth = num_layers  # the cost model prices a first pass as after a full one
        self._shallow_run = 0  # passes in a row, up to the last, that stopped short of full depth
        self.tap: Tap | None = None  # opt-in reader of each exit layer's rows; None costs nothing

    def reset(self) -> None:
        """Forget the sequence (buffers are reused; stale entries are never attended)."""
        self.length = 0
        self.pending = []
        self._layer_len = [0] * self.adapter.num_layers

    def truncate(self, length: int) -> None:
        """Roll the sequence back to its first `length` tokens (rejected drafts)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a sequence of {self.length} tokens to {length}")
        if self.kv == "skip" and length != self.length:
            raise ValueError("kv=skip cannot roll back: its layers hold different tokens (use kv=fill)")
        self.length = length
        self.pending = [p for p in self.pending if p.position < length]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, exit_check: ExitCheck | None = None) -> StepOutput:
        """Append `input_ids` (1-D) and run them, with any pending tokens, through the model.

        `exit_check` is consulted at each exit layer for a single new token; prefill of
        several tokens always runs to full depth.
        """
        with self._attention():
            return self._forward(input_ids, exit_check)

    def _forward(self, input_ids: torch.Tensor, exit_check: ExitCheck | None) -> StepOutput:
        ids = input_ids.reshape(-1)
        n = ids.numel()
        if n == 0:
            raise ValueError("forward needs at least one token")
        if self.length + n > self.max_len:
            raise ValueError(f"sequence of {self.length + n} tokens exceeds the context of {self.max_len}")
        if exit_check is not None and n != 1:
            raise ValueError("exits are decided per token: pass one token at a time with exit_check")
        adapter = self.adapter
        last_layer = adapter.num_layers - 1
        positions = list(range(self.length, self.length + n))
        hidden = adapter.embed(ids.to(self._device))  # [n, d]
        trace = self._trace = PassTrace(previous_depth=self._last_depth, previous_run=self._shallow_run)
        tap = self.tap
        for start, end in self.segments:
            if self.pending:
                positions, hidden = self._join_pending(start, positions, hidden)
            hidden = self._run_segment(start, end, hidden, positions, n)
            if tap is not None and end < last_layer:
                tap(end, positions, hidden)
            if exit_check is not None and end < last_layer:
                logits = exit_check(end, hidden[-1])
                trace.checks.append((end, logits is not None))
                if logits is not None:
                    if self.kv == "fill":
                        joined = zip(positions, hidden, strict=True)
                        self.pending.extend(Pending(p, end, h) for p, h in joined)
                    elif self.kv == "propagate":
                        self._propagate(end + 1, positions, hidden)
                    self.length += n
                    self._last_depth = end + 1  # trace.depth: segments run from layer 0, no scan
                    self._shallow_run += 1
                    return StepOutput(logits, end, trace=trace, flops_of=self.flops_of)
        final = self._unembed(hidden)
        trace.unembed_rows = len(positions)
        self.length += n
        self._last_depth = last_layer + 1
        self._shallow_run = 0
        return StepOutput(
            logits=final[-1],
            exit_layer=last_layer,
            final_logits=final,
            final_positions=positions,
            trace=trace,
            flops_of=self.flops_of,
        )

    def flops_of(self, trace: PassTrace) -> int:
        """Analytic FLOPs of what `trace` says was computed. A graphed segment attends over (and
        so counts) its whole KV bucket: that work is done."""
        prefix, per_key = self._flops_prefix, self._attention_flops_per_key
        layers = sum(
            (prefix[s.end + 1] - prefix[s.start] + per_key * s.keys_attended) * s.rows for s in trace.segments
        )
        projected = sum(p.layers * p.rows for p in trace.projections) * self._projection_flops
        return layers + projected + self._unembed_flops * trace.unembed_rows

    def _propagate(self, start: int, positions: list[int], hidden: torch.Tensor) -> None:
        """kv=propagate: layers start.. get the rows' K/V projected from their exit state `hidden`."""
        if self._projectors is None:
            self._projectors = [self.adapter.kv_projector(i) for i in range(self.adapter.num_layers)]
        last = self.adapter.num_layers - 1
        if start > last:
            return
        pos = self._position_tensor(positions)
        h = hidden[None]
        pos_emb = self._position_embeddings(h, pos)
        for index in range(start, last + 1):
            keys, values = self._projectors[index](h, pos_emb)
            self.cache.keys[index].index_copy_(2, pos, keys.to(self.cache.keys[index].dtype))
            self.cache.values[index].index_copy_(2, pos, values.to(self.cache.values[index].dtype))
        self._trace.projections.append(KVProjection(start, last, len(positions)))

    def _join_pending(
        self, start: int, positions: list[int], hidden: torch.Tensor
    ) -> tuple[list[int], torch.Tensor]:
        """Add the pending tokens that exited just below `start` to the rows, in position order."""
        joiners = [p for p in self.pending if p.layer == start - 1]
        if not joiners:
            return positions, hidden
        self.pending = [p for p in self.pending if p.layer != start - 1]
        positions = [p.position for p in joiners] + positions
        hidden = torch.cat([torch.stack([p.hidden for p in joiners]), hidden])
        order = sorted(range(len(positions)), key=positions.__getitem__)
        if order != list(range(len(positions))):
            positions = [positions[i] for i in order]
            hidden = hidden[order]
        return positions, hidden

    def _run_segment(
        self, start: int, end: int, hidden: torch.Tensor, positions: list[int], new_rows: int | None = None
    ) -> torch.Tensor:
        """Run layers start..end on the rows (graph replay when one fits, else eager)."""
        if self.kv == "skip":
            return self._run_packed_segment(start, end, hidden, positions, new_rows)
        rows = len(positions)
        pos = self._position_tensor(positions)
        if self.graphs is not None and rows <= self.max_graph_rows:
            kv_len = kv_bucket(positions[-1] + 1, self.max_len)
            out = self.graphs.run(
                ("segment", start, end, rows, kv_len),
                (hidden, pos),
                lambda h, p: self._segment(start, end, h, p, kv_len),
            )
        else:
            kv_len = self.max_len if self.static_kv_len else positions[-1] + 1
            # One row attending over exactly the keys up to its own position needs no mask.
            causal = rows > 1 or kv_len != positions[-1] + 1
            out = self._segment(start, end, hidden, pos, kv_len, masked=causal)
        new_rows = rows if new_rows is None else new_rows
        self._trace.segments.append(SegmentRun(start, end, new_rows, rows - new_rows, kv_len))
        return out

    def _run_packed_segment(
        self, start: int, end: int, hidden: torch.Tensor, positions: list[int], new_rows: int | None
    ) -> torch.Tensor:
        """kv=skip: each layer writes the rows after its own entries and attends over those only.

        Eager always: every layer attends over a different number of keys. Rotary uses the rows'
        true positions, so attention sees the right relative positions although slots are packed.
        """
        rows, cache, adapter = len(positions), self.cache, self.adapter
        pos = self._position_tensor(positions)
        h = hidden[None]
        pos_emb = self._position_embeddings(h, pos)
        attended = 0
        for index in range(start, end + 1):
            base = self._layer_len[index]
            if base + rows > self.max_len:
                raise ValueError(f"layer {index} would hold {base + rows} entries; context is {self.max_len}")
            slots = self._all_positions[base : base + rows]
            cache.positions, cache.kv_len = slots, base + rows
            # Every entry below `base` is an earlier token: one row needs no mask.
            keys = self._all_positions[: base + rows]
            mask = None if rows == 1 else self._mask((keys[None, :] <= slots[:, None])[None, None])
            h = adapter.run_layer(index, h, mask, pos_emb, cache)
            self._layer_len[index] = base + rows
            attended += base + rows
        layers = end - start + 1
        new_rows = rows if new_rows is None else new_rows
        kv_len = round(attended / layers)  # representative, for pricing; `attended` is exact
        self._trace.segments.append(SegmentRun(start, end, new_rows, rows - new_rows, kv_len, attended))
        return h[0]

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + the model's unembedding: [rows, d] -> [rows, V] (graphed when it fits)."""
        if self.graphs is not None and len(hidden) <= self.max_graph_rows:
            return self.graphs.run(("unembed", len(hidden)), (hidden,), self._final_logits)
        return self._final_logits(hidden)

    def _final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.unembed(self.adapter.final_norm(hidden))

    def _position_tensor(self, positions: list[int]) -> torch.Tensor:
        # Decode rows are consecutive positions: a view of a device arange, no host copy.
        if positions[-1] - positions[0] + 1 == len(positions):
            return self._all_positions[positions[0] : positions[-1] + 1]
        return torch.tensor(positions, dtype=torch.long, device=self._all_positions.device)

    def _segment(
        self, start: int, end: int, hidden: torch.Tensor, pos: torch.Tensor, kv_len: int, masked: bool = True
    ) -> torch.Tensor:
        """Layers start..end on `hidden` [rows, d] at positions `pos`, attending over `kv_len` keys.

        Reads nothing but its arguments, the weights, the rotary table and the KV buffers, so
        it can be captured as a graph with `hidden` and `pos` as the static inputs.
        """
        adapter, cache = self.adapter, self.cache
        cache.positions = pos
        cache.kv_len = kv_len
        mask = None
        if masked:
            keys = self._all_positions[:kv_len]
            mask = self._mask((keys[None, :] <= pos[:, None])[None, None])  # [1, 1, rows, kv_len]
        h = hidden[None]
        pos_emb = self._position_embeddings(h, pos)
        for index in range(start, end + 1):
            h = adapter.run_layer(index, h, mask, pos_emb, cache)
        return h[0]

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        return attention_mask(allowed, self._mask_fill, self.adapter.dtype)

    def _position_embeddings(self, h: torch.Tensor, pos: torch.Tensor) -> tuple:
        if self._rope is None:
            return self.adapter.position_embeddings(h, pos)
        # A gather from the table computed once, not the rotary maths per segment.
        return tuple(t.index_select(1, pos) for t in self._rope)


# Rotary variants whose angles depend on the sequence length seen so far cannot be tabulated.
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


def _rotary_table(adapter: ModelAdapter, positions: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """(cos, sin) of every position, computed once by the model's own rotary module.

    Computing them per segment was the largest cost of a pass outside the layers (about 25 us
    a segment on CPU, several segments a pass); a gather from this table is a single op.
    """
    if getattr(adapter.rotary, "rope_type", "default") in _LENGTH_DEPENDENT_ROPE:
        return None
    probe = torch.zeros(1, 1, adapter.hidden_size, dtype=adapter.dtype, device=adapter.device)
    return tuple(t.contiguous() for t in adapter.position_embeddings(probe, positions))
