"""Preallocated K/V buffers for a batch of sequences, written at (sequence slot, position).

One buffer per layer, ``[slots, kv_heads, max_len + 1, head_dim]``: sequence slot ``s`` keeps its
token at position ``p`` in ``[s, :, p]``, so every sequence owns a row of the buffer and never
sees another's entries. The extra last column is *scratch*: a pass pads sequences with fewer rows
up to the widest one, and the padding rows write their K/V there, where no mask ever reaches
(a pass attends over at most ``max_len`` columns). Like `StaticKVCache`, writes go to explicit
positions, so layers may be filled out of order (exited tokens' deeper K/V come later).

The engine (`earlyexit.model.batched_engine`) sets where the current rows go and which slots and
columns they attend over before running a segment; each layer module then calls `update` exactly
as it would transformers' own cache.
"""

from __future__ import annotations

import torch


class BatchedKVCache:
    """Fixed-size K/V storage for `slots` sequences and every layer, duck-typed to `Cache.update`.

    Before a segment the engine sets ``row_slots`` ([n, 1]: each sequence of the pass's slot),
    ``write_positions`` ([n, rows]: where each row's K/V go, scratch for padding), ``read`` (the
    slots to attend over: a slice when they are consecutive, which reads the buffer in place, else
    an index tensor, which copies them) and ``kv_len`` (how many columns the rows attend over).
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        slots: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (slots, num_kv_heads, max_len + 1, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len, self.slots = max_len, slots
        self.scratch = max_len  # the column padding rows write to; never attended
        empty = torch.zeros(0, dtype=torch.long, device=device)
        self.row_slots = empty[:, None]
        self.write_positions = empty[:, None]
        self.read: slice | torch.Tensor = slice(0, 0)
        self.kv_len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the rows' K/V ([n, kv_heads, rows, head_dim]) at their slots and positions; return
        the attended part of the buffer for the pass's slots, [n, kv_heads, kv_len, head_dim]."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # Advanced indices around a slice put their dimensions first: [n, rows, kv_heads, head_dim].
        keys[self.row_slots, :, self.write_positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[self.row_slots, :, self.write_positions] = value_states.transpose(1, 2).to(values.dtype)
        return self._attended(keys), self._attended(values)

    def _attended(self, buffer: torch.Tensor) -> torch.Tensor:
        columns = buffer[:, :, : self.kv_len]
        if isinstance(self.read, slice):
            return columns[self.read]
        return columns.index_select(0, self.read)

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Write single rows outside a layer call (kv=propagate): `keys`/`values` [m, kv_heads, head_dim]
        at (slots[i], positions[i])."""
        self.keys[layer][slots, :, positions] = keys.to(self.keys[layer].dtype)
        self.values[layer][slots, :, positions] = values.to(self.values[layer].dtype)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` to slot `target` in every layer (the
        engine keeps its live sequences in the first slots, so a full pass reads them in place)."""
        for buffer in (*self.keys, *self.values):
            buffer[target, :, :length] = buffer[source, :, :length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
