"""Preallocated per-layer K/V buffers written at explicit positions.

Static shapes matter on GPU: a buffer that never reallocates keeps kernels and CUDA
graphs valid as the sequence grows (DESIGN.md, "Measured on an H100"). Writes go to the
rows' own positions, so layers may be filled out of order, which early exit needs: a
token that exited at layer k gets its deeper K/V written later, at its own position.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Fixed-size K/V storage for every layer, duck-typed to transformers' `Cache.update`.

    The engine sets `positions` (where the current rows go) and `kv_len` (how much of
    the buffer the rows attend over) before running a segment; each layer module then
    calls `update`, exactly as it would with transformers' own cache.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (1, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.positions = torch.zeros(0, dtype=torch.long, device=device)
        self.kv_len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the rows' K/V at their positions; return the attended slice of the buffer."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.positions, key_states.to(keys.dtype))
        values.index_copy_(2, self.positions, value_states.to(values.dtype))
        return keys[:, :, : self.kv_len], values[:, :, : self.kv_len]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
