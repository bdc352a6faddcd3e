"""Architecture adapter: the only place that knows a model family's module names.

The exit engine runs the model's own layer modules in its own loop, so it needs the
layer list, embedding, rotary embedding, final norm and unembedding, how a layer
takes its KV cache argument, and (for ``engine.kv=propagate``) how a layer projects a hidden
state to its K/V alone. Adding a Llama-family model means adding one adapter here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.models.gpt_neox import modeling_gpt_neox
from transformers.models.llama import modeling_llama

# (hidden [1, rows, d], (cos, sin) of the rows) -> (keys, values), each [1, kv_heads, rows, head_dim]
KVProjector = Callable[[torch.Tensor, tuple], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ModelAdapter:
    """Uniform view of a decoder-only causal LM for the exit engine and the heads."""

    model: PreTrainedModel
    embed: nn.Module
    layers: nn.ModuleList
    rotary: nn.Module
    final_norm: nn.Module
    # Keyword under which the layer module receives its KV cache object.
    cache_kwarg: str
    # Layer module -> its K/V projection alone (input norm, K and V matmuls, rotary on K).
    kv_projector_of: Callable[[nn.Module], KVProjector]

    @property
    def config(self):
        return self.model.config

    @property
    def unembed(self) -> nn.Linear:
        # transformers 5 renamed GPT-NeoX's `embed_out`; the accessor is stable.
        return self.model.get_output_embeddings()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.unembed.weight.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden_size // self.config.num_attention_heads

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    @property
    def model_id(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or self.config.model_type)

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unembed.weight.dtype

    def position_embeddings(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple:
        return self.rotary(hidden, positions[None, :])

    def run_layer(
        self, index: int, hidden: torch.Tensor, mask: torch.Tensor, pos_emb: tuple, cache
    ) -> torch.Tensor:
        out = self.layers[index](
            hidden, attention_mask=mask, position_embeddings=pos_emb, **{self.cache_kwarg: cache}
        )
        return out[0] if isinstance(out, tuple) else out

    def kv_projector(self, index: int) -> KVProjector:
        """Layer `index`'s K/V of a hidden state taken as that layer's input, with no attention or
        MLP: CALM's state propagation (DESIGN.md, "What happens to an exited token's KV")."""
        return self.kv_projector_of(self.layers[index])


def _rotate_keys(apply_rotary: Callable, keys: torch.Tensor, pos_emb: tuple) -> torch.Tensor:
    # The family's own rotary function rotates a (query, key) pair; keys stand in for both.
    return apply_rotary(keys, keys, *pos_emb)[1]


def _gpt_neox_kv(layer: nn.Module) -> KVProjector:
    """GPT-NeoX fuses Q, K and V in one matmul laid out per head as [q | k | v]; the K and V rows
    are sliced out once (a copy of 2/3 of that weight), so no query is computed for nothing."""
    attention = layer.attention
    heads, size = attention.config.num_attention_heads, attention.head_size
    fused = attention.query_key_value
    weight = fused.weight.detach().view(heads, 3, size, -1)[:, 1:].reshape(heads * 2 * size, -1)
    bias = None if fused.bias is None else fused.bias.detach().view(heads, 3, size)[:, 1:].reshape(-1)

    def project(hidden: torch.Tensor, pos_emb: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        kv = F.linear(layer.input_layernorm(hidden), weight, bias)
        kv = kv.view(*hidden.shape[:-1], heads, 2 * size).transpose(1, 2)
        keys, values = kv.chunk(2, dim=-1)
        return _rotate_keys(modeling_gpt_neox.apply_rotary_pos_emb, keys, pos_emb), values

    return project


def _llama_kv(layer: nn.Module) -> KVProjector:
    attention = layer.self_attn

    def project(hidden: torch.Tensor, pos_emb: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        x = layer.input_layernorm(hidden)
        shape = (*hidden.shape[:-1], -1, attention.head_dim)
        keys = attention.k_proj(x).view(shape).transpose(1, 2)
        values = attention.v_proj(x).view(shape).transpose(1, 2)
        return _rotate_keys(modeling_llama.apply_rotary_pos_emb, keys, pos_emb), values

    return project


def _gpt_neox(model: PreTrainedModel) -> ModelAdapter:
    base = model.gpt_neox
    return ModelAdapter(
        model, base.embed_in, base.layers, base.rotary_emb, base.final_layer_norm, "layer_past", _gpt_neox_kv
    )


def _llama_like(model: PreTrainedModel) -> ModelAdapter:
    base = model.model
    return ModelAdapter(
        model, base.embed_tokens, base.layers, base.rotary_emb, base.norm, "past_key_values", _llama_kv
    )


ADAPTERS = {"gpt_neox": _gpt_neox, "llama": _llama_like}


def get_adapter(model: PreTrainedModel) -> ModelAdapter:
    """Return the adapter for `model`, or fail naming its type and the supported ones."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_type](model)
