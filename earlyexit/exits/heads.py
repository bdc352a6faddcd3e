"""Exit heads: where they sit, what they are, what they cost, and how they are stored.

Every head reads the hidden state after its layer through the backbone's own frozen
final norm (as in Valade, arXiv 2407.21082), then maps it to vocabulary logits:

- ``linear``  a new full-vocabulary ``Linear(d, V, bias=False)`` (the paper's head),
  initialised from the model's unembedding so training starts from the logit lens;
- ``shared``  the model's own unembedding, nothing trained (LayerSkip's exit);
- ``mlp``     a residual MLP (d -> d) before a new ``Linear(d, V)``;
- ``lowrank`` ``Linear(d, r) -> Linear(r, V)`` initialised from a truncated SVD of the
  unembedding: r*(d+V) weights instead of d*V, so a head that does not fire costs a
  fraction of a full one (the cost model in DESIGN.md makes that the point).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.graphs import GraphCache

ARCHITECTURES = ("linear", "shared", "mlp", "lowrank")
PLACEMENTS = ("explicit", "even", "every")
FORMAT = "earlyexit-heads/1"


def place_heads(
    num_layers: int,
    placement: str = "even",
    layers: list[int] | None = None,
    n: int | None = None,
    every: int | None = None,
) -> list[int]:
    """Head layer indices (0-based; a head at k reads the output of layer k).

    ``even`` spreads n heads as the paper does: after ``round(x)`` layers for x in
    ``linspace(0, L, n + 2)[1:-1]``; ``every`` puts one after every k-th layer.
    """
    if placement == "explicit":
        if not layers:
            raise ValueError("placement 'explicit' needs a non-empty list of layers")
        chosen = [int(k) for k in layers]
    elif placement == "even":
        if n is None or n < 1:
            raise ValueError(f"placement 'even' needs n >= 1 heads, got {n}")
        step = num_layers / (n + 1)
        chosen = [round(step * (i + 1)) - 1 for i in range(n)]
    elif placement == "every":
        if every is None or every < 1:
            raise ValueError(f"placement 'every' needs every >= 1, got {every}")
        chosen = list(range(every - 1, num_layers - 1, every))
    else:
        raise ValueError(f"unknown head placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
    bad = [k for k in chosen if not 0 <= k < num_layers - 1]
    if bad:
        raise ValueError(
            f"head layers {bad} outside [0, {num_layers - 1}): a {num_layers}-layer model takes heads "
            f"at layers 0..{num_layers - 2} (the last layer already has the model's own head)"
        )
    return sorted(set(chosen))


class LinearHead(nn.Module):
    def __init__(self, d: int, vocab: int, init: torch.Tensor | None) -> None:
        super().__init__()
        self.proj = nn.Linear(d, vocab, bias=False)
        if init is not None:
            self.proj.weight.data.copy_(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    def __init__(self, d: int, vocab: int, init: torch.Tensor | None) -> None:
        super().__init__()
        self.up = nn.Linear(d, d)
        self.down = nn.Linear(d, d)
        nn.init.zeros_(self.down.weight)  # starts as the linear head, then learns a correction
        nn.init.zeros_(self.down.bias)
        self.proj = nn.Linear(d, vocab, bias=False)
        if init is not None:
            self.proj.weight.data.copy_(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x + self.down(nn.functional.gelu(self.up(x))))


class LowRankHead(nn.Module):
    def __init__(self, d: int, vocab: int, rank: int, init: torch.Tensor | None) -> None:
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.proj = nn.Linear(rank, vocab, bias=False)
        if init is not None:
            u, s, vh = torch.linalg.svd(init.float(), full_matrices=False)
            root = s[:rank].sqrt()
            self.proj.weight.data.copy_(u[:, :rank] * root)
            self.down.weight.data.copy_(root[:, None] * vh[:rank])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.down(x))


@dataclass(frozen=True)
class HeadSpec:
    """What a head set is, independent of its weights; also its cache identity."""

    architecture: str
    layers: tuple[int, ...]
    rank: int = 0  # lowrank only; 0 means hidden_size // 4

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown head architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}"
            )


class HeadSet(nn.Module):
    """The exit heads of one model. The frozen final norm and unembedding are borrowed, not owned."""

    def __init__(self, adapter: ModelAdapter, spec: HeadSpec) -> None:
        super().__init__()
        num_layers = adapter.num_layers
        place_heads(num_layers, "explicit", list(spec.layers))  # validates the layers
        self.spec = spec
        self.base_model = adapter.model_id
        self.num_layers = num_layers
        self.hidden_size = adapter.hidden_size
        self.vocab_size = adapter.vocab_size
        self.rank = spec.rank or max(1, self.hidden_size // 4)
        # A tuple keeps the backbone's modules out of this module's parameters and state dict.
        self._backbone = (adapter.final_norm, adapter.unembed)
        init = adapter.unembed.weight.detach().float().cpu()
        self.heads = nn.ModuleDict({str(k): self._build(init) for k in spec.layers})
        self.flops = 0  # analytic FLOPs of every head evaluation so far (see earlyexit/model/flops.py)
        # Set to a GraphCache (earlyexit/model/graphs.py) to replay single-token head calls as graphs.
        self.graphs: GraphCache | None = None
        self._flops_per_row = 2 * self._macs()  # computed once: forward is on the decode hot path
        if spec.architecture != "shared":
            self.to(device=adapter.device, dtype=adapter.dtype)

    def _build(self, init: torch.Tensor) -> nn.Module:
        d, vocab = self.hidden_size, self.vocab_size
        arch = self.spec.architecture
        if arch == "shared":
            return nn.Identity()
        if arch == "linear":
            return LinearHead(d, vocab, init)
        if arch == "mlp":
            return MLPHead(d, vocab, init)
        return LowRankHead(d, vocab, self.rank, init)

    @property
    def layers(self) -> list[int]:
        return list(self.spec.layers)

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the head at `layer` for hidden states `[..., d]` taken after that layer."""
        self.flops += self._flops_per_row * (hidden.numel() // hidden.shape[-1])
        if self.graphs is not None and hidden.dim() == 1:
            return self.graphs.run(("head", layer), (hidden,), lambda h: self._logits(layer, h))
        return self._logits(layer, hidden)

    def with_summary(
        self, layer: int, hidden: torch.Tensor, summary: Callable[[torch.Tensor], torch.Tensor], name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's logits [V] and `summary(logits)`: the exit decision's device half.

        When replaying graphs, head and summary are one captured graph (named by `name`), so
        a decision is one replay and one small host read.
        """
        self.flops += self._flops_per_row
        if self.graphs is None:
            logits = self._logits(layer, hidden)
            return logits, summary(logits)

        def body(h: torch.Tensor) -> torch.Tensor:
            logits = self._logits(layer, h).float()
            return torch.cat((summary(logits).reshape(-1), logits))  # a 0-d summary too

        out = self.graphs.run(("decision", layer, name), (hidden,), body)
        return out[-self.vocab_size :], out[: -self.vocab_size]

    def _logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        norm, unembed = self._backbone
        x = norm(hidden)
        if self.spec.architecture == "shared":
            return unembed(x)
        return self.heads[str(layer)](x)

    def _macs(self) -> int:
        d, vocab = self.hidden_size, self.vocab_size
        return {
            "linear": d * vocab,
            "shared": d * vocab,
            "mlp": 2 * d * d + d * vocab,
            "lowrank": self.rank * (d + vocab),
        }[self.spec.architecture]

    def cost_per_token(self) -> dict[str, float]:
        """Multiply-accumulates and weight bytes one head reads per token, and its size in layers."""
        d = self.hidden_size
        macs = self._macs()
        layer_macs = 12 * d * d  # attention (4d^2) + MLP (8d^2) weights of one transformer layer
        bytes_per = torch.finfo(self._backbone[1].weight.dtype).bits // 8
        return {"macs": macs, "weight_bytes": macs * bytes_per, "layers_equivalent": macs / layer_macs}

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "base_model": self.base_model,
            "architecture": self.spec.architecture,
            "layers": json.dumps(self.layers),
            "rank": str(self.rank),
            "num_layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size),
            "vocab_size": str(self.vocab_size),
        }

    def save(self, path: str | Path) -> None:
        """Write trainable weights and identifying metadata as one safetensors file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        if not tensors:  # safetensors needs one tensor; keep a marker for weightless heads
            tensors = {"_empty": torch.zeros(0)}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=self.metadata())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, adapter: ModelAdapter, check_model_id: bool = True) -> HeadSet:
        """Load heads onto `adapter`'s model, refusing a model they were not made for."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an earlyexit head file (format {meta.get('format')!r})")
        expected = {
            "num_layers": adapter.num_layers,
            "hidden_size": adapter.hidden_size,
            "vocab_size": adapter.vocab_size,
        }
        for key, have in expected.items():
            if int(meta[key]) != have:
                raise ValueError(
                    f"heads in {path} were made for {meta['base_model']!r} ({key}={meta[key]}), "
                    f"not for {adapter.model_id!r} ({key}={have})"
                )
        if check_model_id and meta["base_model"] != adapter.model_id:
            raise ValueError(
                f"heads in {path} were made for {meta['base_model']!r}, not for {adapter.model_id!r} "
                "(pass check_model_id=False if they are the same weights under another name)"
            )
        spec = HeadSpec(meta["architecture"], tuple(json.loads(meta["layers"])), int(meta["rank"]))
        heads = cls(adapter, spec)
        state = {k: v for k, v in load_file(str(path)).items() if k != "_empty"}
        heads.heads.load_state_dict(state)
        heads.to(device=adapter.device, dtype=adapter.dtype)
        return heads


def head_cost_ratio(adapter: ModelAdapter) -> float:
    """A full-vocabulary head's weight reads relative to one layer's (the cost model's key number)."""
    d = adapter.hidden_size
    return adapter.vocab_size * d / (12 * d * d) if d else math.inf
