"""Head placement, architectures, cost and storage."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt_neox

from earlyexit.exits.heads import ARCHITECTURES, HeadSet, HeadSpec, place_heads
from earlyexit.model.adapter import get_adapter


def test_even_placement_follows_the_paper():
    # linspace(0, 24, 6)[1:-1] = 4.8, 9.6, 14.4, 19.2 layers -> after 5, 10, 14, 19 layers
    assert place_heads(24, "even", n=4) == [4, 9, 13, 18]
    assert place_heads(6, "even", n=1) == [2]
    assert place_heads(12, "every", every=4) == [3, 7]
    assert place_heads(12, "explicit", layers=[5, 1, 5]) == [1, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "explicit", "layers": [11]}, r"\[11\] outside \[0, 11\)"),
        ({"placement": "explicit", "layers": [-1]}, "outside"),
        ({"placement": "even", "n": 0}, "n >= 1"),
        ({"placement": "every", "every": 0}, "every >= 1"),
        ({"placement": "diagonal"}, "valid: explicit, even, every"),
    ],
)
def test_bad_placements_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        place_heads(12, **kwargs)


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: linear, shared, mlp, lowrank"):
        HeadSpec("conv", (1,))


def test_shared_head_is_the_logit_lens():
    model = tiny_gpt_neox()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("shared", (2,)))
    hidden = torch.randn(3, 32, dtype=torch.float64)
    expected = model.get_output_embeddings()(model.gpt_neox.final_layer_norm(hidden))
    assert torch.equal(heads(2, hidden), expected)
    assert not list(heads.parameters())


@pytest.mark.parametrize("arch", ["linear", "mlp"])
def test_trainable_heads_start_as_the_logit_lens(arch):
    adapter = get_adapter(tiny_gpt_neox())
    hidden = torch.randn(4, 32, dtype=torch.float64)
    lens = HeadSet(adapter, HeadSpec("shared", (1,)))(1, hidden)
    assert torch.allclose(HeadSet(adapter, HeadSpec(arch, (1,)))(1, hidden), lens, atol=1e-12)


def test_full_rank_lowrank_head_reproduces_the_unembedding():
    adapter = get_adapter(tiny_gpt_neox())
    hidden = torch.randn(4, 32, dtype=torch.float64)
    lens = HeadSet(adapter, HeadSpec("shared", (1,)))(1, hidden)
    full = HeadSet(adapter, HeadSpec("lowrank", (1,), rank=32))(1, hidden)
    assert torch.allclose(full, lens, atol=1e-4)  # SVD is taken in float32
    cheap = HeadSet(adapter, HeadSpec("lowrank", (1,), rank=8))
    assert cheap.cost_per_token()["macs"] == 8 * (32 + 97)
    assert (
        cheap.cost_per_token()["macs"] < HeadSet(adapter, HeadSpec("linear", (1,))).cost_per_token()["macs"]
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(tmp_path, arch):
    adapter = get_adapter(tiny_gpt_neox())
    heads = HeadSet(adapter, HeadSpec(arch, (1, 3)))
    for p in heads.parameters():
        p.data.add_(torch.randn_like(p))  # make them differ from any initialisation
    heads.save(tmp_path / "h.safetensors")
    loaded = HeadSet.load(tmp_path / "h.safetensors", adapter)
    hidden = torch.randn(2, 32, dtype=torch.float64)
    assert loaded.layers == [1, 3] and loaded.spec.architecture == arch
    assert torch.equal(loaded(3, hidden), heads(3, hidden))


def test_loading_onto_a_mismatched_model_names_both(tmp_path):
    small = get_adapter(tiny_gpt_neox())
    HeadSet(small, HeadSpec("linear", (1,))).save(tmp_path / "h.safetensors")
    other = get_adapter(tiny_gpt_neox(hidden=48))
    with pytest.raises(ValueError, match=r"hidden_size=32.*hidden_size=48"):
        HeadSet.load(tmp_path / "h.safetensors", other)
    same_shape = tiny_gpt_neox(seed=5)
    same_shape.config._name_or_path = "someone/else"
    with pytest.raises(ValueError, match="someone/else"):
        HeadSet.load(tmp_path / "h.safetensors", get_adapter(same_shape))
    assert HeadSet.load(tmp_path / "h.safetensors", get_adapter(same_shape), check_model_id=False).layers == [
        1
    ]
