"""Self-supervised head training: heads learn the frozen model's own final-layer distribution.

Loss is KL(final softmax || head softmax) at temperature T, times T^2 so the gradient
scale does not depend on T (standard distillation), averaged over heads; or
cross-entropy to the final layer's argmax. Only head weights train.

A half-precision backbone (float16/bfloat16, e.g. Pythia on a GPU) trains its heads with
float32 master weights under ``torch.autocast`` (and a gradient scaler for float16): AdamW's
small updates vanish in half-precision weights. A batch that does not fit in device memory is
split into micro-batches whose gradients add up to the same step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from earlyexit.data.streams import contiguous_windows, sample_windows
from earlyexit.exits.heads import HeadSet
from earlyexit.model.adapter import ModelAdapter

log = logging.getLogger(__name__)

LOSSES = ("kl", "ce")
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-4
    warmup: int = 30
    weight_decay: float = 0.0
    temperature: float = 1.0
    loss: str = "kl"
    seed: int = 0
    checkpoint_every: int = 100

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        for key in ("steps", "batch_size", "seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def check_stream(stream: torch.Tensor, seq_len: int, what: str) -> None:
    """Reject a corpus too short to give one window, before any training starts."""
    if len(stream) < seq_len:
        raise ValueError(
            f"the {what} text has {len(stream)} tokens, fewer than one window of seq_len={seq_len}; "
            "give more text or a shorter seq_len"
        )


def backbone_targets(adapter: ModelAdapter, heads: HeadSet, ids: torch.Tensor):
    """Frozen forward: hidden states after each head layer and the final logits."""
    with torch.no_grad():
        out = adapter.model(ids.to(adapter.device), output_hidden_states=True)
    # transformers puts the embeddings first: hidden_states[k + 1] is layer k's output.
    return {k: out.hidden_states[k + 1] for k in heads.layers}, out.logits


def head_loss(head_logits: torch.Tensor, final_logits: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.loss == "ce":
        return F.cross_entropy(head_logits.flatten(0, -2).float(), final_logits.argmax(-1).flatten())
    t = cfg.temperature
    target = F.log_softmax(final_logits.float() / t, dim=-1)
    pred = F.log_softmax(head_logits.float() / t, dim=-1)
    return (
        F.kl_div(pred.flatten(0, -2), target.flatten(0, -2), log_target=True, reduction="batchmean") * t * t
    )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


CHECKPOINT_FORMAT = "earlyexit-train-checkpoint/1"


def mixed_precision(adapter: ModelAdapter) -> contextlib.AbstractContextManager:
    """Autocast to the backbone's half dtype (no-op for float32/float64 backbones)."""
    if adapter.dtype not in HALF:
        return contextlib.nullcontext()
    return torch.autocast(adapter.device.type, dtype=adapter.dtype)


def _accumulate(
    adapter: ModelAdapter, heads: HeadSet, ids: torch.Tensor, cfg: TrainConfig, scaler, micro: int
) -> float:
    """Forward and backward one batch in micro-batches of ``micro`` rows; returns the batch loss."""
    total = 0.0
    for chunk in ids.split(micro):
        hidden, final = backbone_targets(adapter, heads, chunk)
        with mixed_precision(adapter):
            loss = torch.stack([head_loss(heads(k, hidden[k]), final, cfg) for k in heads.layers]).mean()
        share = loss * (len(chunk) / len(ids))
        scaler.scale(share).backward()
        total += share.item()
    return total


def _save_checkpoint(path: Path, heads: HeadSet, opt, step: int, cfg: TrainConfig) -> None:
    """One safetensors file: head weights and optimiser moments as tensors, the rest as JSON
    in its header. Never a pickle: the cache directory may be a shared filesystem, and
    unpickling a file planted there would run its code."""
    opt_state = opt.state_dict()
    tensors = {f"heads/{k}": v.detach().contiguous().cpu() for k, v in heads.heads.state_dict().items()}
    for index, slots in opt_state["state"].items():
        tensors.update({f"opt/{index}/{name}": v.detach().contiguous().cpu() for name, v in slots.items()})
    state = {
        "step": step,
        "config": asdict(cfg),
        "fingerprint": cfg.fingerprint(),
        "layers": heads.layers,
        "architecture": heads.spec.architecture,
        "param_groups": opt_state["param_groups"],
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(state)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON state, tensors) of a training checkpoint; reading it runs no code.

    Anything that is not a checkpoint written by `train_heads` (a pickle, a truncated file,
    another format) is refused with a ValueError naming the file.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        state = json.loads(meta["state"])
    except (SafetensorError, ValueError, KeyError) as err:
        raise ValueError(
            f"{path} is not an earlyexit training checkpoint ({err}); refusing to load it: delete it "
            "to start training afresh"
        ) from None
    return state, tensors


def _resume(ckpt: Path, heads: HeadSet, opt, cfg: TrainConfig) -> int:
    """Load a checkpoint's head and optimiser state; returns its step. Other settings are refused."""
    state, tensors = read_checkpoint(ckpt)
    if (
        state["fingerprint"] != cfg.fingerprint()
        or state["layers"] != heads.layers
        or (state["architecture"] != heads.spec.architecture)
    ):
        raise ValueError(
            f"checkpoint {ckpt} was made with other settings ({state['config']}, heads "
            f"{state['architecture']} at {state['layers']}); delete it or use another path"
        )
    heads.heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("heads/")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, index, name = key.split("/", 2)
            slots.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    return state["step"]


def train_heads(
    adapter: ModelAdapter,
    heads: HeadSet,
    stream: torch.Tensor,
    cfg: TrainConfig,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> list[float]:
    """Train `heads` in place on windows of `stream`; returns the loss per step.

    With `checkpoint`, state is saved every `checkpoint_every` steps and at the end (as
    safetensors, never a pickle), and an existing checkpoint resumes the run exactly (same
    data, same optimiser state).
    A checkpoint made with other settings or heads is refused, never silently mixed.
    """
    cfg.validate()
    check_stream(stream, cfg.seq_len, "training")
    if heads.spec.architecture == "shared":
        return []  # LayerSkip's exit reuses the model's own head: nothing to train
    torch.manual_seed(cfg.seed)
    adapter.model.requires_grad_(False)
    if adapter.dtype in HALF:
        heads.float()  # float32 master weights; the forward runs under autocast (mixed_precision)
    scaler = torch.amp.GradScaler(adapter.device.type, enabled=adapter.dtype == torch.float16)
    micro = cfg.batch_size
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        start = _resume(ckpt, heads, opt, cfg)
    losses: list[float] = []
    bar = tqdm(
        range(start, cfg.steps), desc="train heads", disable=not progress, initial=start, total=cfg.steps
    )
    heads.train()
    started, tokens = time.perf_counter(), 0
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        ids = sample_windows(stream, cfg.batch_size, cfg.seq_len, cfg.seed, step)
        while True:
            opt.zero_grad(set_to_none=True)
            try:
                loss = _accumulate(adapter, heads, ids, cfg, scaler, micro)
                break
            except torch.OutOfMemoryError:
                if micro == 1:
                    raise
                micro = max(1, micro // 2)  # a batch that fits: the same step in smaller pieces
                if adapter.device.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning("head training: out of memory; micro-batches of %d of %d rows", micro, len(ids))
        scaler.step(opt)
        scaler.update()
        losses.append(loss)
        tokens += ids.numel()
        rate = tokens / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{rate:,.0f}", micro=micro)
        done = step + 1
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save_checkpoint(ckpt, heads, opt, done, cfg)
    heads.eval()
    heads.to(adapter.dtype)  # back to the backbone's dtype for exits (a no-op without mixed precision)
    return losses


@torch.no_grad()
def head_agreement(
    adapter: ModelAdapter, heads: HeadSet, stream: torch.Tensor, seq_len: int, max_tokens: int = 8192
) -> dict[int, float]:
    """Per head, the share of held-out tokens whose head argmax equals the final argmax."""
    check_stream(stream, seq_len, "held-out")
    windows = contiguous_windows(stream, seq_len, max_tokens)
    hits = dict.fromkeys(heads.layers, 0)
    total = 0
    for batch in windows.split(8):
        hidden, final = backbone_targets(adapter, heads, batch)
        top = final.argmax(-1)
        for k in heads.layers:
            hits[k] += (heads(k, hidden[k]).argmax(-1) == top).sum().item()
        total += top.numel()
    return {k: hits[k] / total for k in heads.layers}
