"""Architecture adapter: the only place that knows a model family's module names.

The exit engine runs the model's own layer modules in its own loop, so it needs the
layer list, embedding, rotary embedding, final norm and unembedding, and how a layer
takes its KV cache argument. Adding a Llama-family model means adding one adapter here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


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


def _gpt_neox(model: PreTrainedModel) -> ModelAdapter:
    base = model.gpt_neox
    return ModelAdapter(
        model, base.embed_in, base.layers, base.rotary_emb, base.final_layer_norm, "layer_past"
    )


def _llama_like(model: PreTrainedModel) -> ModelAdapter:
    base = model.model
    return ModelAdapter(model, base.embed_tokens, base.layers, base.rotary_emb, base.norm, "past_key_values")


ADAPTERS = {"gpt_neox": _gpt_neox, "llama": _llama_like}


def get_adapter(model: PreTrainedModel) -> ModelAdapter:
    """Return the adapter for `model`, or fail naming its type and the supported ones."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_type](model)
