"""Head training on half-precision backbones (autocast, float32 master weights), batches that do not
fit (micro-batches), and the progress bar's tokens/s. CUDA itself is not available to these tests:
the same code path runs with bfloat16 autocast on the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits import train as train_module
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.train import TrainConfig, train_heads
from earlyexit.model.adapter import get_adapter

CFG = TrainConfig(steps=8, batch_size=4, seq_len=16, lr=3e-3, warmup=2, checkpoint_every=100)


def _setup(dtype: torch.dtype = torch.float32):
    adapter = get_adapter(tiny_gpt_neox(seed=0).to(dtype))
    stream = torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(7))
    return adapter, HeadSet(adapter, HeadSpec("linear", (1, 3))), stream


def test_bfloat16_backbone_trains_float32_heads_under_autocast():
    adapter, heads, stream = _setup(torch.bfloat16)
    assert next(heads.parameters()).dtype == torch.bfloat16
    seen = []
    hook = heads.heads["1"].proj.register_forward_hook(
        lambda module, args, out: seen.append((module.weight.dtype, args[0].dtype, out.dtype))
    )
    cfg = TrainConfig(steps=40, batch_size=4, seq_len=16, lr=1e-2, warmup=4)
    losses = train_heads(adapter, heads, stream, cfg, progress=False)
    hook.remove()
    # During training: float32 master weights, bfloat16 matmuls (autocast casts the weight down).
    assert seen and all(w == torch.float32 and o == torch.bfloat16 for w, _, o in seen), seen[:3]
    assert sum(losses[-5:]) < sum(losses[:5])
    # After training the heads run with the backbone in its own dtype.
    assert all(p.dtype == torch.bfloat16 for p in heads.parameters())


def test_float32_backbone_trains_without_autocast():
    adapter, heads, stream = _setup(torch.float32)
    seen = []
    heads.heads["1"].proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    train_heads(adapter, heads, stream, CFG, progress=False)
    assert set(seen) == {torch.float32}


def test_a_batch_that_does_not_fit_is_split_into_micro_batches(monkeypatch, caplog):
    adapter, straight, stream = _setup(torch.float64)
    want = train_heads(adapter, straight, stream, CFG, progress=False)
    real = train_module.backbone_targets

    def small_memory(adapter, heads, ids):
        if len(ids) > 1:  # pretend only one row fits on the device
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(adapter, heads, ids)

    monkeypatch.setattr(train_module, "backbone_targets", small_memory)
    _, split, _ = _setup(torch.float64)
    got = train_heads(adapter, split, stream, CFG, progress=False)
    # Same steps, same data: the gradients of the pieces add up to the whole batch's (the KL
    # loss is computed in float32, so they agree to float32 rounding, not exactly).
    assert got == pytest.approx(want, rel=1e-5)
    for a, b in zip(split.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    assert "micro-batches of 1 of 4 rows" in caplog.text


def test_out_of_memory_with_one_row_is_raised(monkeypatch):
    adapter, heads, stream = _setup()

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_module, "backbone_targets", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        train_heads(adapter, heads, stream, CFG, progress=False)


def test_progress_bar_shows_tokens_per_second(capsys):
    adapter, heads, stream = _setup()
    train_heads(adapter, heads, stream, CFG, progress=True)
    err = capsys.readouterr().err
    assert "train heads" in err and "tok_s=" in err
