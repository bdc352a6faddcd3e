"""Analytic FLOPs of what was actually computed: layers x rows, attention at the real KV length, heads.

Counted like `torch.utils.flop_counter.FlopCounterMode` (2*m*n*k per matmul, attention as
two matmuls over the whole attended length, elementwise ops free) so the two can be
checked against each other; derived from the layer's own Linear modules, so it holds for
any architecture the adapter supports.
"""

from __future__ import annotations

from torch import nn

from earlyexit.model.adapter import ModelAdapter


def linear_flops(module: nn.Module) -> int:
    """FLOPs per row of every Linear inside `module` (2 * in * out each)."""
    return sum(2 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def attention_flops(adapter: ModelAdapter, kv_len: int) -> int:
    """FLOPs per query row of one layer's attention over `kv_len` keys: QK^T and AV."""
    query_width = adapter.config.num_attention_heads * adapter.head_dim
    return 4 * query_width * kv_len


def unembed_flops(adapter: ModelAdapter) -> int:
    return 2 * adapter.unembed.weight.numel()
