"""Self-supervised head training: learns, is deterministic, resumes exactly, rejects bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits import train as train_module
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.train import TrainConfig, head_agreement, read_checkpoint, train_heads
from earlyexit.model.adapter import get_adapter

CFG = TrainConfig(steps=6, batch_size=2, seq_len=16, lr=3e-3, warmup=2, checkpoint_every=3)


def _setup(arch="linear", seed=0):
    model = tiny_gpt_neox(seed=seed).float()
    adapter = get_adapter(model)
    stream = torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(7))
    return adapter, HeadSet(adapter, HeadSpec(arch, (1, 3))), stream


def _weights(heads):
    return torch.cat([p.detach().flatten() for p in heads.parameters()])


def test_training_is_deterministic_and_leaves_the_backbone_alone():
    adapter, heads_a, stream = _setup()
    backbone = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    train_heads(adapter, heads_a, stream, CFG, progress=False)
    _, heads_b, _ = _setup()
    train_heads(adapter, heads_b, stream, CFG, progress=False)
    assert torch.equal(_weights(heads_a), _weights(heads_b))
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in backbone.items())


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_training_raises_agreement_with_the_final_layer(loss):
    adapter, heads, stream = _setup(arch="lowrank")
    before = head_agreement(adapter, heads, stream, seq_len=16)
    cfg = TrainConfig(steps=60, batch_size=4, seq_len=16, lr=1e-2, warmup=5, loss=loss)
    losses = train_heads(adapter, heads, stream, cfg, progress=False)
    after = head_agreement(adapter, heads, stream, seq_len=16)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(after[k] > before[k] for k in heads.layers), (before, after)


def test_resume_is_exact(tmp_path, monkeypatch):
    adapter, straight, stream = _setup()
    train_heads(adapter, straight, stream, CFG, progress=False)
    ckpt = tmp_path / "heads.ckpt"
    # A run that is killed after step 4: its last checkpoint is from step 3.
    real_sample = train_module.sample_windows

    def dies_at_step_4(stream, batch, seq_len, seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_sample(stream, batch, seq_len, seed, step)

    _, killed, _ = _setup()
    monkeypatch.setattr(train_module, "sample_windows", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_heads(adapter, killed, stream, CFG, checkpoint=ckpt, progress=False)
    monkeypatch.undo()
    assert read_checkpoint(ckpt)[0]["step"] == 3
    _, resumed, _ = _setup()
    train_heads(adapter, resumed, stream, CFG, checkpoint=ckpt, progress=False)
    assert torch.equal(_weights(resumed), _weights(straight))


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    adapter, heads, stream = _setup()
    ckpt = tmp_path / "heads.ckpt"
    train_heads(adapter, heads, stream, CFG, checkpoint=ckpt, progress=False)
    _, again, _ = _setup()
    with pytest.raises(ValueError, match="other settings"):
        train_heads(adapter, again, stream, TrainConfig(**{**CFG.__dict__, "lr": 1e-3}), checkpoint=ckpt)


class Planted:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_planted_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    adapter, heads, stream = _setup()
    ckpt = tmp_path / "heads.ckpt"
    marker = tmp_path / "code-ran"
    torch.save({"step": 3, "payload": Planted(marker)}, ckpt)
    before = _weights(heads).clone()
    with pytest.raises(ValueError, match=r"heads\.ckpt is not an earlyexit training checkpoint"):
        train_heads(adapter, heads, stream, CFG, checkpoint=ckpt, progress=False)
    assert not marker.exists(), "loading the checkpoint ran the code planted in it"
    assert torch.equal(_weights(heads), before)
    # The file really is an exploit: the old loader (pickle) would have run it.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_checkpoints_are_safetensors_and_a_truncated_one_is_refused(tmp_path):
    adapter, heads, stream = _setup()
    ckpt = tmp_path / "heads.ckpt"
    train_heads(adapter, heads, stream, CFG, checkpoint=ckpt, progress=False)
    state, tensors = read_checkpoint(ckpt)
    assert state["step"] == CFG.steps and state["layers"] == [1, 3]
    weights = heads.heads.state_dict()
    assert all(torch.equal(tensors[f"heads/{k}"], v) for k, v in weights.items())
    assert sum(k.startswith("opt/") for k in tensors) == 3 * len(weights)  # step, exp_avg, exp_avg_sq
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="not an earlyexit training checkpoint"):
        read_checkpoint(ckpt)


def test_too_short_corpus_is_rejected_before_training():
    adapter, heads, _ = _setup()
    with pytest.raises(ValueError, match="has 10 tokens, fewer than one window of seq_len=16"):
        train_heads(adapter, heads, torch.arange(10), CFG, progress=False)
    with pytest.raises(ValueError, match="has 0 tokens"):
        train_heads(adapter, heads, torch.zeros(0, dtype=torch.long), CFG, progress=False)


def test_bad_training_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown loss 'mse'; valid: kl, ce"):
        TrainConfig(loss="mse").validate()
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        TrainConfig(steps=0).validate()
