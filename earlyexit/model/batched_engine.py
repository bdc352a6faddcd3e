"""The layer loop with exits for a batch of sequences: `ExitEngine`'s rules, B sequences at a time.

Each sequence decodes exactly as it would alone in `ExitEngine`: its own positions, its own KV
rule for exited tokens (``fill``: pending, carried deeper by its next pass that goes deeper;
``propagate``: K/V projected from the exit state; ``skip``: none), its own exits. What is shared
is the work: one pass runs every fed sequence's rows through each segment together, and at an
exit boundary the sequences whose newest token exits *leave the pass* (their rows are dropped
from the batch before the next segment, never computed and discarded), so exits save real work
at B > 1. Sequences that finish leave the batch (`release`).

Layout, and what it costs
-------------------------
- **KV cache**: one ``[slots, kv_heads, max_len + 1, head_dim]`` buffer per layer
  (`BatchedKVCache`); sequence slot ``s`` keeps position ``p`` at ``[s, :, p]``. Static shapes, as
  `StaticKVCache`, and writes at explicit (slot, position), so layers fill out of order. Memory:
  ``slots x max_len`` entries per layer, whatever the sequences' lengths. Live sequences are kept
  in the first slots (a finished one's slot is refilled by the last live sequence: one copy of that
  sequence's K/V), so a pass of every live sequence attends over the buffer in place; a pass of a
  subset whose slots are not consecutive (after exits, or in a round where some sequences wait)
  copies its slots' attended columns once per layer (``index_select``), the price of not computing
  rows that left.
- **Rows**: a segment takes ``[n, R, d]``: the n sequences of the pass, each padded to the widest
  one's R rows. A decode step feeds one token per sequence, so R = 1 and nothing is padded until
  rows of different counts meet: pending tokens joining one sequence (``fill``), drafts in a
  verification pass, or prompts of different lengths in the prefill. Padding rows are computed
  (that is their cost), write their K/V to the cache's scratch column and attend to position 0 of
  their own slot, so they never touch a real entry and never produce NaN.
- **Attention**: every row of a segment attends over the same width W, the deepest real row's
  position + 1 (the padded width), with an explicit boolean mask from per-row positions (key
  ``j`` visible to a row at position ``p`` of the same slot iff ``j <= p``; under ``skip`` the
  layer's packed slots instead). So no sequence attends to another's entries (each reads only its
  slot), to padding (scratch is past W; stale entries past a sequence's length are masked), or to
  rolled-back drafts. Rows of short sequences pay for W keys; the trace records W.
- Why not a flattened (varlen) layout with one block-diagonal mask: every row would attend over
  all sequences' keys (B x the work), and the model's own layer modules take ``[batch, rows, d]``.

Positions are explicit (rotary tables gathered per row for Llama and GPT-NeoX); attention goes
through the model's own layer modules with SDPA or eager attention (`_mask_fill`), as in
`ExitEngine`. CUDA graphs are refused: every captured graph has batch-1 shapes (one sequence's
rows and KV bucket), and a batch changes its shape whenever a sequence exits or finishes.

Each pass records a `BatchPassTrace` (a `PassTrace`): one `BatchSegmentRun` per segment with the
rows of every sequence in it (padding counted, with the pending rows when the segment holds any,
else with the new rows; ``padding_rows`` says how many), ``kv_len`` = W (under ``skip`` the exact
sum over layers in ``attended``), one exit check per row checked, the unembedding's rows, and
``kv=propagate``'s projections; `flops_of` prices it like `ExitEngine.flops_of`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch
from torch.nn.attention import sdpa_kernel
from torch.nn.utils.rnn import pad_sequence

from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.batched_kv_cache import BatchedKVCache
from earlyexit.model.engine import (
    CUDA_ATTENTION,
    ExitCheck,
    Pending,
    _mask_fill,
    _rotary_table,
    attention_mask,
    check_kv_strategy,
)
from earlyexit.model.flops import attention_flops, linear_flops, unembed_flops
from earlyexit.model.trace import KVProjection, PassTrace, SegmentRun

GRAPHS_REFUSED = (
    "CUDA graphs cannot decode a batch: every captured graph has batch-1 shapes (one sequence's rows "
    "and KV bucket), while a batch changes shape whenever a sequence exits or finishes; run the batch "
    "eagerly (graphs=None) or decode one sequence at a time with ExitEngine"
)

# Called with (sequence, exit layer, positions of its rows there, their hidden states [rows, d])
# after every segment that ends at an exit layer: `ExitEngine.tap`, per sequence (DEL's shadow tokens).
BatchTap = Callable[[int, int, list[int], torch.Tensor], None]


class RowsCheck(Protocol):
    """An `ExitCheck` that can also decide many sequences' newest rows in one call (one head matmul,
    one host read): the engine uses `rows` for the sequences of a pass that share this check."""

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None: ...

    def rows(self, layer: int, hidden: torch.Tensor) -> list[torch.Tensor | None]:
        """hidden [m, d] -> per row the head's logits [V] if that row exits at `layer`, else None."""
        ...


@dataclass(frozen=True)
class BatchSegmentRun(SegmentRun):
    """A segment of a batched pass: ``new_rows + pending_rows`` are all rows computed, padding
    included (``padding_rows`` of them; counted as pending where the segment holds pending rows)."""

    padding_rows: int = 0
    sequences: int = 0


@dataclass
class BatchPassTrace(PassTrace):
    """A `PassTrace` of a batched pass: checks are one per row checked; the pass counts as exited
    (its rows drafts or early-exited tokens) only when no row reached full depth."""

    sequences: int = 0  # sequences fed
    full_depth: bool = False

    @property
    def exited(self) -> bool:
        return not self.full_depth


@dataclass
class SequenceStep:
    """One sequence's part of a pass (`StepOutput`'s fields)."""

    logits: torch.Tensor  # [V] for the sequence's newest token (head or final)
    exit_layer: int  # num_layers - 1 for full depth
    final_logits: torch.Tensor | None = None  # [rows, V] when its rows reached full depth
    final_positions: list[int] = field(default_factory=list)


@dataclass
class BatchStep:
    """Result of one batched pass: each fed sequence's output, and what the pass computed."""

    outputs: dict[int, SequenceStep]
    trace: BatchPassTrace
    flops_of: Callable[[PassTrace], int] | None = field(default=None, repr=False)

    def __getitem__(self, sequence: int) -> SequenceStep:
        return self.outputs[sequence]

    @property
    def flops(self) -> int:
        return self.flops_of(self.trace) if self.flops_of is not None else 0


@dataclass
class _Geometry:
    """Where a segment's rows sit: fixed while the pass's row set does not change."""

    positions: torch.Tensor  # [n, R] rotary positions (0 for padding)
    writes: torch.Tensor  # [n, R] K/V columns (scratch for padding)
    row_slots: torch.Tensor  # [n, 1]
    read: slice | torch.Tensor  # the slots attended over
    kv_len: int
    mask: torch.Tensor | None
    pos_emb: tuple


@dataclass
class _Rows:
    """The rows of a pass at one segment: per sequence its positions (ascending) and hidden states,
    padded to the widest sequence in ``hidden`` [n, R, d]."""

    seqs: list[int]
    slots: list[int]
    positions: list[list[int]]
    new: list[int]  # how many of each sequence's rows are the pass's own tokens
    hidden: torch.Tensor
    geometry: _Geometry | None = None

    @classmethod
    def build(cls, seqs, slots, positions, new, hiddens: list[torch.Tensor]) -> _Rows:
        if len({len(h) for h in hiddens}) == 1:
            return cls(seqs, slots, positions, new, torch.stack(hiddens))
        return cls(seqs, slots, positions, new, pad_sequence(hiddens, batch_first=True))

    def real(self, g: int) -> torch.Tensor:
        return self.hidden[g, : len(self.positions[g])]

    def keep(self, groups: list[int]) -> _Rows:
        """The rows of the sequences `groups` (by index), as a smaller batch."""
        positions = [self.positions[g] for g in groups]
        index = torch.tensor(groups, device=self.hidden.device)
        hidden = self.hidden.index_select(0, index)[:, : max(map(len, positions))]
        pick = [self.seqs[g] for g in groups], [self.slots[g] for g in groups]
        return _Rows(*pick, positions, [self.new[g] for g in groups], hidden)


class BatchedExitEngine:
    """Runs up to `batch_size` sequences through the model segment by segment, with per-sequence exits."""

    def __init__(
        self,
        adapter: ModelAdapter,
        exit_layers: Sequence[int] = (),
        batch_size: int = 8,
        max_len: int | None = None,
        kv: str = "fill",
        graphs: object | None = None,
    ) -> None:
        if graphs is not None:
            raise ValueError(GRAPHS_REFUSED)
        check_kv_strategy(kv)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_layers = adapter.num_layers
        bad = [k for k in exit_layers if not 0 <= k < num_layers - 1]
        if bad:
            raise ValueError(
                f"exit layers {bad} outside [0, {num_layers - 1}) for a {num_layers}-layer model"
            )
        self.adapter, self.kv, self.batch_size = adapter, kv, batch_size
        self.exit_layers = sorted({int(k) for k in exit_layers})
        bounds = [*self.exit_layers, num_layers - 1]
        self.segments = list(zip([0, *[b + 1 for b in self.exit_layers]], bounds, strict=True))
        self.max_len = min(max_len or adapter.max_positions, adapter.max_positions)
        self._device = adapter.device
        self.cache = BatchedKVCache(
            num_layers,
            adapter.num_kv_heads,
            adapter.head_dim,
            self.max_len,
            batch_size,
            adapter.dtype,
            self._device,
        )
        self._all_positions = torch.arange(self.max_len + 1, device=self._device)
        self._rope = _rotary_table(adapter, self._all_positions[: self.max_len])
        self._attention = partial(sdpa_kernel, CUDA_ATTENTION) if self._device.type == "cuda" else nullcontext
        self._mask_fill = _mask_fill(adapter)
        layer_flops = [linear_flops(layer) for layer in adapter.layers]
        self._flops_prefix = [sum(layer_flops[:i]) for i in range(num_layers + 1)]
        self._attention_flops_per_key = attention_flops(adapter, 1)
        self._unembed_flops = unembed_flops(adapter)
        self._projection_flops = 2 * adapter.hidden_size * 2 * adapter.num_kv_heads * adapter.head_dim
        self._projectors: list | None = None  # kv=propagate: each layer's K/V projection, built once
        self.tap: BatchTap | None = None
        self.reset()

    # ------------------------------------------------------------------ sequences
    def reset(self) -> None:
        """Forget every sequence (buffers are reused; stale entries are never attended)."""
        self._slot: dict[int, int] = {}
        self._length: dict[int, int] = {}
        self._pending: dict[int, list[Pending]] = {}
        self._layer_len = [[0] * self.adapter.num_layers for _ in range(self.batch_size)]  # kv=skip
        self._last_depth = self.adapter.num_layers  # priced as after a full pass, as ExitEngine
        self._shallow_run = 0

    @property
    def sequences(self) -> list[int]:
        """The live sequences."""
        return sorted(self._slot)

    def length(self, sequence: int) -> int:
        return self._length[self._check_live(sequence)]

    def pending(self, sequence: int) -> list[Pending]:
        """The sequence's exited tokens whose deeper layers are not computed yet (kv=fill)."""
        return list(self._pending[self._check_live(sequence)])

    def start(self, prompts: Sequence[torch.Tensor], logits_rows: int | None = None) -> BatchStep:
        """Forget every sequence, then prefill `prompts` as sequences 0..B-1 in one full-depth pass.

        `logits_rows` unembeds only each sequence's last that many prompt rows (None: all of them).
        """
        prompts = [torch.as_tensor(p).reshape(-1) for p in prompts]
        if not prompts:
            raise ValueError("empty batch: give at least one prompt")
        if len(prompts) > self.batch_size:
            raise ValueError(
                f"a batch of {len(prompts)} sequences does not fit the KV cache of {self.batch_size} "
                f"sequences x {self.max_len} tokens"
            )
        self.reset()
        for i in range(len(prompts)):
            self._slot[i], self._length[i], self._pending[i] = i, 0, []
        return self.forward(dict(enumerate(prompts)), logits_rows=logits_rows)

    def truncate(self, sequence: int, length: int) -> None:
        """Roll `sequence` back to its first `length` tokens (rejected drafts)."""
        current = self.length(sequence)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate sequence {sequence} of {current} tokens to {length}")
        if self.kv == "skip" and length != current:
            raise ValueError("kv=skip cannot roll back: its layers hold different tokens (use kv=fill)")
        self._length[sequence] = length
        self._pending[sequence] = [p for p in self._pending[sequence] if p.position < length]

    def release(self, sequence: int) -> None:
        """A finished sequence leaves the batch; the last live slot moves into its place."""
        slot = self._slot.pop(self._check_live(sequence))
        del self._length[sequence], self._pending[sequence]
        last = len(self._slot)
        if slot == last:
            return
        moved = next(s for s, k in self._slot.items() if k == last)
        self.cache.move(last, slot, self._length[moved])
        self._slot[moved] = slot
        self._layer_len[slot], self._layer_len[last] = self._layer_len[last], self._layer_len[slot]

    def _check_live(self, sequence: int) -> int:
        if sequence not in self._slot:
            raise ValueError(f"sequence {sequence} is not in the batch (live: {self.sequences})")
        return sequence

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def forward(
        self,
        feeds: Mapping[int, torch.Tensor | int],
        checks: Mapping[int, ExitCheck] | None = None,
        logits_rows: int | None = None,
    ) -> BatchStep:
        """Append each fed sequence's ids (1-D, or one int) and run them, with the sequence's pending
        tokens, through the model.

        `checks` maps a sequence that feeds one token to its exit check, consulted at each exit
        layer (`ExitEngine.forward`'s `exit_check`); sequences sharing a `RowsCheck` are decided in
        one call. Sequences without a check run to full depth.
        """
        with self._attention():
            return self._forward(feeds, checks or {}, logits_rows)

    def _forward(self, feeds, checks, logits_rows) -> BatchStep:
        rows = self._embed(feeds, checks)
        last_layer = self.adapter.num_layers - 1
        trace = self._trace = BatchPassTrace(
            previous_depth=self._last_depth, previous_run=self._shallow_run, sequences=len(rows.seqs)
        )
        outputs: dict[int, SequenceStep] = {}
        for start, end in self.segments:
            if self.kv == "fill":
                rows = self._join_pending(start, rows)
            self._run_segment(start, end, rows)
            if end == last_layer:
                break
            if self.tap is not None:
                for g, seq in enumerate(rows.seqs):
                    self.tap(seq, end, rows.positions[g], rows.real(g))
            if checks:
                rows = self._exits(end, rows, checks, outputs)
                if rows is None:  # every sequence left at this layer
                    self._last_depth, self._shallow_run = end + 1, self._shallow_run + 1
                    return BatchStep(outputs, trace, self.flops_of)
        self._unembed(rows, logits_rows, outputs)
        trace.full_depth = True
        self._last_depth, self._shallow_run = last_layer + 1, 0
        return BatchStep(outputs, trace, self.flops_of)

    def _embed(self, feeds: Mapping[int, torch.Tensor | int], checks: Mapping[int, ExitCheck]) -> _Rows:
        """Check the feeds, give the tokens their positions (lengths advance now) and embed them."""
        if not feeds:
            raise ValueError("a pass needs at least one sequence")
        seqs = sorted(feeds, key=lambda s: self._slot[self._check_live(s)])
        if all(isinstance(feeds[s], int) for s in seqs):  # a decode step: one tensor, not one per sequence
            flat = torch.tensor([feeds[s] for s in seqs])
            ids = list(flat[:, None])
        else:
            ids = [torch.as_tensor(feeds[s]).reshape(-1) for s in seqs]
            flat = torch.cat(ids)
        positions = []
        for seq, tokens in zip(seqs, ids, strict=True):
            n, length = tokens.numel(), self._length[seq]
            if n == 0:
                raise ValueError(f"sequence {seq}: a pass needs at least one token")
            if length + n > self.max_len:
                raise ValueError(
                    f"sequence {seq} of {length + n} tokens exceeds the context of {self.max_len}"
                )
            if n != 1 and seq in checks:
                raise ValueError(f"sequence {seq}: exits are decided per token; feed one token with a check")
            positions.append(list(range(length, length + n)))
            self._length[seq] = length + n
        counts = [len(p) for p in positions]
        hidden = self.adapter.embed(flat.to(self._device))  # [N, d]
        slots = [self._slot[s] for s in seqs]
        if len(set(counts)) == 1:
            return _Rows(seqs, slots, positions, counts, hidden.view(len(seqs), counts[0], -1))
        return _Rows.build(seqs, slots, positions, counts, list(hidden.split(counts)))

    def _join_pending(self, start: int, rows: _Rows) -> _Rows:
        """Add each sequence's pending tokens that exited just below `start` to its rows, by position."""
        joins = {}
        for g, seq in enumerate(rows.seqs):
            pending = self._pending[seq]
            joiners = [p for p in pending if p.layer == start - 1]
            if joiners:
                joins[g] = joiners
                self._pending[seq] = [p for p in pending if p.layer != start - 1]
        if not joins:
            return rows
        positions, hiddens = [], []
        for g in range(len(rows.seqs)):
            pos, hidden = rows.positions[g], rows.real(g)
            if g in joins:
                pos = [p.position for p in joins[g]] + pos
                hidden = torch.cat([torch.stack([p.hidden for p in joins[g]]), hidden])
                order = sorted(range(len(pos)), key=pos.__getitem__)
                if order != list(range(len(pos))):
                    pos, hidden = [pos[i] for i in order], hidden[order]
            positions.append(pos)
            hiddens.append(hidden)
        return _Rows.build(rows.seqs, rows.slots, positions, rows.new, hiddens)

    def _run_segment(self, start: int, end: int, rows: _Rows) -> None:
        """Layers start..end on every row of the pass (``rows.hidden`` is replaced); one trace entry."""
        geometry = self._geometry(rows)
        cache, adapter = self.cache, self.adapter
        cache.row_slots, cache.read = geometry.row_slots, geometry.read
        h = rows.hidden
        attended = 0
        if self.kv == "skip":
            for index in range(start, end + 1):
                cache.write_positions, cache.kv_len, mask = self._packed_layer(rows, index)
                h = adapter.run_layer(index, h, mask, geometry.pos_emb, cache)
                for g, slot in enumerate(rows.slots):
                    self._layer_len[slot][index] += len(rows.positions[g])
                attended += cache.kv_len
            kv_len = round(attended / (end - start + 1))
        else:
            cache.write_positions, cache.kv_len = geometry.writes, geometry.kv_len
            for index in range(start, end + 1):
                h = adapter.run_layer(index, h, geometry.mask, geometry.pos_emb, cache)
            kv_len = geometry.kv_len
        rows.hidden = h
        self._trace.segments.append(self._segment_run(start, end, rows, kv_len, attended))

    @staticmethod
    def _segment_run(start: int, end: int, rows: _Rows, kv_len: int, attended: int) -> BatchSegmentRun:
        new = sum(rows.new)
        real = sum(map(len, rows.positions))
        padding = rows.hidden.shape[0] * rows.hidden.shape[1] - real
        pending = real - new
        if pending:
            pending += padding
        else:
            new += padding
        return BatchSegmentRun(start, end, new, pending, kv_len, attended, padding, len(rows.seqs))

    def _geometry(self, rows: _Rows) -> _Geometry:
        """Positions, K/V columns, mask and rotary of the rows, computed once per row set."""
        if rows.geometry is not None:
            return rows.geometry
        width, scratch, device = rows.hidden.shape[1], self.cache.scratch, self._device
        pads = [width - len(p) for p in rows.positions]
        positions = torch.tensor(
            [p + [0] * k for p, k in zip(rows.positions, pads, strict=True)], device=device
        )
        writes = positions
        if any(pads):
            writes = [p + [scratch] * k for p, k in zip(rows.positions, pads, strict=True)]
            writes = torch.tensor(writes, device=device)
        kv_len = max(p[-1] for p in rows.positions) + 1
        # One row per sequence, each the newest of the same length: every key is visible, no mask
        # (kv=skip masks layer by layer, `_packed_layer`).
        mask = None
        if self.kv != "skip" and (width > 1 or any(p[-1] != kv_len - 1 for p in rows.positions)):
            mask = self._mask(self._all_positions[:kv_len] <= positions[..., None])
        slots = rows.slots
        consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
        read = slice(slots[0], slots[0] + len(slots)) if consecutive else torch.tensor(slots, device=device)
        row_slots = torch.tensor(slots, device=device)[:, None]
        pos_emb = self._position_embeddings(rows.hidden, positions)
        rows.geometry = _Geometry(positions, writes, row_slots, read, kv_len, mask, pos_emb)
        return rows.geometry

    def _packed_layer(self, rows: _Rows, index: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """kv=skip: layer `index` keeps each sequence's entries packed (slot != position); the rows go
        after its own entries and attend over those only. Returns (K/V columns, width, mask)."""
        width, scratch = rows.hidden.shape[1], self.cache.scratch
        bases = [self._layer_len[slot][index] for slot in rows.slots]
        counts = [len(p) for p in rows.positions]
        kv_len = max(b + c for b, c in zip(bases, counts, strict=True))
        if kv_len > self.max_len:
            raise ValueError(f"layer {index} would hold {kv_len} entries; context is {self.max_len}")
        columns = [list(range(b, b + c)) for b, c in zip(bases, counts, strict=True)]
        writes = torch.tensor([col + [scratch] * (width - len(col)) for col in columns], device=self._device)
        if width == 1 and all(b + 1 == kv_len for b in bases):
            return writes, kv_len, None
        visible = torch.tensor([col + [0] * (width - len(col)) for col in columns], device=self._device)
        return writes, kv_len, self._mask(self._all_positions[:kv_len] <= visible[..., None])

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """[n, R, W] allowed keys -> the layer modules' [n, 1, R, W] mask (boolean for SDPA, additive
        for eager attention, as `ExitEngine._mask`)."""
        return attention_mask(allowed[:, None], self._mask_fill, self.adapter.dtype)

    def _position_embeddings(self, h: torch.Tensor, positions: torch.Tensor) -> tuple:
        """(cos, sin) for positions [n, R] (or [1, m]): gathered from the table when there is one."""
        if self._rope is None:
            return self.adapter.rotary(h, positions)
        return tuple(t[0][positions] for t in self._rope)

    def _exits(self, end: int, rows: _Rows, checks, outputs: dict[int, SequenceStep]) -> _Rows | None:
        """Consult the checked sequences' exit checks on their newest rows; those that exit leave the
        pass (their rows' deeper layers go by the KV rule). Returns the rows that go on, or None."""
        checked = [g for g, seq in enumerate(rows.seqs) if seq in checks]
        if not checked:
            return rows
        newest = rows.hidden[checked, [len(rows.positions[g]) - 1 for g in checked]]  # [m, d]
        decisions, calls = self._decide(end, [checks[rows.seqs[g]] for g in checked], newest)
        self._trace.checks.extend((end, d is not None) for d in decisions)
        self._trace.head_calls.extend(calls)
        fired = [g for g, d in zip(checked, decisions, strict=True) if d is not None]
        if not fired:
            return rows
        for g, logits in zip(checked, decisions, strict=True):
            if logits is not None:
                outputs[rows.seqs[g]] = SequenceStep(logits, end)
        self._leave(end, rows, fired)
        staying = sorted(set(range(len(rows.seqs))) - set(fired))
        return rows.keep(staying) if staying else None

    @staticmethod
    def _decide(
        layer: int, checks: list[ExitCheck], newest: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], list[int]]:
        """Each row's check, rows sharing a `RowsCheck` in one call; and the rows of each head call
        (the cost model prices a call of m rows, not m calls of one)."""
        decisions: list[torch.Tensor | None] = [None] * len(checks)
        calls: list[int] = []
        shared: dict[int, list[int]] = {}
        for i, check in enumerate(checks):
            shared.setdefault(id(check), []).append(i)
        for members in shared.values():
            check = checks[members[0]]
            many = getattr(check, "rows", None)
            if many is not None and len(members) > 1:
                results = many(layer, newest[members])
                calls.append(len(members))
            else:
                results = [check(layer, newest[i]) for i in members]
                calls += [1] * len(members)
            for i, result in zip(members, results, strict=True):
                decisions[i] = result
        return decisions, calls

    def _leave(self, end: int, rows: _Rows, fired: list[int]) -> None:
        """The exited sequences' rows: pending at `end` (fill), K/V projected (propagate), nothing (skip)."""
        if self.kv == "fill":
            for g in fired:
                rows_g = zip(rows.positions[g], rows.real(g), strict=True)
                self._pending[rows.seqs[g]].extend(Pending(p, end, h) for p, h in rows_g)
        elif self.kv == "propagate":
            slots = [rows.slots[g] for g in fired for _ in rows.positions[g]]
            positions = [p for g in fired for p in rows.positions[g]]
            self._propagate(end + 1, slots, positions, torch.cat([rows.real(g) for g in fired]))

    def _propagate(self, start: int, slots: list[int], positions: list[int], hidden: torch.Tensor) -> None:
        """kv=propagate: layers start.. get the rows' K/V projected from their exit state `hidden` [m, d]."""
        last = self.adapter.num_layers - 1
        if start > last:
            return
        if self._projectors is None:
            self._projectors = [self.adapter.kv_projector(i) for i in range(self.adapter.num_layers)]
        pos = torch.tensor(positions, device=self._device)
        slot = torch.tensor(slots, device=self._device)
        h = hidden[None]
        pos_emb = self._position_embeddings(h, pos[None])
        for index in range(start, last + 1):
            keys, values = self._projectors[index](h, pos_emb)  # [1, kv_heads, m, head_dim]
            self.cache.write(index, slot, pos, keys[0].transpose(0, 1), values[0].transpose(0, 1))
        self._trace.projections.append(KVProjection(start, last, len(positions)))

    def _unembed(self, rows: _Rows, logits_rows: int | None, outputs: dict[int, SequenceStep]) -> None:
        """Final norm + unembedding of the rows that reached full depth (each sequence's last
        `logits_rows` of them, or all), split per sequence."""
        last_layer = self.adapter.num_layers - 1
        counts = [len(p) if logits_rows is None else min(len(p), logits_rows) for p in rows.positions]
        if rows.hidden.shape[1] == 1:
            hidden = rows.hidden[:, 0]
        else:
            groups = [g for g, k in enumerate(counts) for _ in range(k)]
            index = [
                r for p, k in zip(rows.positions, counts, strict=True) for r in range(len(p) - k, len(p))
            ]
            hidden = rows.hidden[groups, index]
        final = self.adapter.unembed(self.adapter.final_norm(hidden))
        for seq, positions, block in zip(rows.seqs, rows.positions, final.split(counts), strict=True):
            outputs[seq] = SequenceStep(
                block[-1], last_layer, block, positions[len(positions) - len(block) :]
            )
        self._trace.unembed_rows = len(final)

    def flops_of(self, trace: PassTrace) -> int:
        """Analytic FLOPs of what `trace` says was computed (padding rows included: they are computed)."""
        prefix, per_key = self._flops_prefix, self._attention_flops_per_key
        layers = sum(
            (prefix[s.end + 1] - prefix[s.start] + per_key * s.keys_attended) * s.rows for s in trace.segments
        )
        projected = sum(p.layers * p.rows for p in trace.projections) * self._projection_flops
        return layers + projected + self._unembed_flops * trace.unembed_rows
