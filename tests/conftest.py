"""Shared fixtures: tiny random models built from configs, in float64 for exactness tests."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from earlyexit.exits.confidence import should_exit
from earlyexit.exits.head_stats import collect_head_stats
from earlyexit.exits.heads import HeadSet, HeadSpec
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.measure.profile import CostProfile
from earlyexit.model.adapter import get_adapter

# The tests' models are tiny: a second intra-op thread buys nothing, and on a shared 2-core machine
# spinning OpenMP threads made single tests up to 8x slower (test_flops: 30 s with 2, 4 s with 1).
torch.set_num_threads(1)

# Overrides that make a real `run.py` run on the embedded model take seconds, every stage included.
TINY_RUN = [
    "task=none",
    "bench.prompts=2",
    "bench.max_new_tokens=8",
    "bench.repeats=1",
    "bench.warmup=0",
    "calibration.max_tokens=2048",
    "bench.profile_repeats=2",
]


def tiny_gpt_neox(
    layers: int = 6,
    hidden: int = 32,
    vocab: int = 97,
    seed: int = 0,
    parallel: bool = True,
    attn: str = "sdpa",
    max_positions: int = 128,
):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,
        use_parallel_residual=parallel,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return GPTNeoXForCausalLM(config).double().eval()


def tiny_llama(layers: int = 4, hidden: int = 32, vocab: int = 97, seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).double().eval()


# Random models whose heads sometimes agree with the final layer, shared by the decoding and graph tests.
VOCAB = 97  # the tiny random models' vocabulary


def damped_model(seed: int, layers: int = 6, damp: float = 0.15, max_positions: int = 128):
    """A random fp32 model whose later layers change the residual stream little, so early
    heads often (not always) agree with the final layer: both accept and reject paths run."""
    model = tiny_gpt_neox(layers=layers, seed=seed, max_positions=max_positions).float()
    with torch.no_grad():
        for i, layer in enumerate(model.gpt_neox.layers):
            if i >= 2:
                layer.attention.dense.weight.mul_(damp)
                layer.mlp.dense_4h_to_h.weight.mul_(damp)
    return model


def damped_llama(seed: int, layers: int = 6, damp: float = 0.15):
    """`damped_model` for the Llama family (float64): heads often, not always, agree with the final layer."""
    model = tiny_llama(layers=layers, seed=seed)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i >= 2:
                layer.self_attn.o_proj.weight.mul_(damp)
                layer.mlp.down_proj.weight.mul_(damp)
    return model


def prompts(n: int, seed: int, max_len: int = 10) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen)
    return [torch.randint(0, VOCAB, (int(k),), generator=gen) for k in lengths]


def quantile_thresholds(adapter, heads, metric, q):
    stream = torch.randint(0, VOCAB, (256,), generator=torch.Generator().manual_seed(11))
    stats = collect_head_stats(adapter, heads, stream, seq_len=64, metrics=(metric,), progress=False)
    return {k: stats.scores[metric][k].quantile(q).item() for k in heads.layers}


@pytest.fixture
def neox64():
    return tiny_gpt_neox()


@torch.no_grad()
def naive_rule_step(model, ids: list[int], exit_of: list[int], rule: str, policy=None):
    """The last token of `ids` by brute force under `rule` ("fill", "propagate" or "skip").

    Shares no engine code: the whole sequence is recomputed layer by layer with the model's own
    layer modules and a full causal mask. An earlier token that left at layer e (`exit_of`, one per
    earlier token) keeps, at every layer j > e, its exit state (propagate: others attend to the K/V
    the layer computes from it; skip: it is masked out of their attention; fill: it is computed
    on). With `policy`, the last token leaves at the first exit layer whose head score passes its
    threshold. Returns (its logits [V], its exit layer).
    """
    base = model.gpt_neox if hasattr(model, "gpt_neox") else model.model
    embed = base.embed_in if hasattr(base, "embed_in") else base.embed_tokens
    norm = base.final_layer_norm if hasattr(base, "final_layer_norm") else base.norm
    last = len(base.layers) - 1
    n = len(ids)
    h = embed(torch.tensor([ids]))
    pos = torch.arange(n)
    pos_emb = base.rotary_emb(h, pos[None])
    causal = pos[None, :] <= pos[:, None]
    states = [*exit_of, last]
    for j, module in enumerate(base.layers):
        frozen = torch.tensor([e < j for e in states])
        mask = causal & ~frozen[None, :] if rule == "skip" else causal
        mask = mask | torch.eye(n, dtype=torch.bool)  # a frozen row's output is discarded anyway
        new = module(h, attention_mask=mask[None, None], position_embeddings=pos_emb)
        new = new[0] if isinstance(new, tuple) else new
        h = new if rule == "fill" else torch.where(frozen[None, :, None], h, new)
        if policy is not None and j in policy.thresholds:
            head_logits = policy.heads(j, h[0, -1])
            if should_exit(policy.metric(head_logits), policy.thresholds[j]):
                return head_logits, j
    return model.get_output_embeddings()(norm(h[0, -1])), last


def naive_teacher_forced(model, policy, ids, score_from: int, rule: str):
    """Teacher-forced exits by brute force under `rule`: each fed position t >= score_from is
    `naive_rule_step` over ids[:t+1]; positions below score_from are the prefill, at full depth.
    Returns ([n, V] logits, exit layers)."""
    ids = [int(i) for i in ids]
    exit_of, emitted = [model.config.num_hidden_layers - 1] * score_from, []
    for t in range(score_from, len(ids)):
        logits, layer = naive_rule_step(model, ids[: t + 1], exit_of, rule, policy)
        exit_of.append(layer)
        emitted.append(logits)
    return torch.stack(emitted), exit_of[score_from:]


# Damped float64 models whose heads fire often, at thresholds that make a mix of exits: the
# cases on which the KV rules (fill, propagate, skip) are checked against `naive_rule_step`.
RULE_CASES = {  # name: (model, head layers, metric, quantile of scores used as threshold)
    "llama": (lambda: damped_llama(0), (1, 3), "max-prob", 0.4),
    "neox": (lambda: damped_model(2).double(), (1, 3), "entropy", 0.5),
}


@pytest.fixture(scope="module", params=list(RULE_CASES))
def rule_case(request):
    """(model, adapter, heads, policy) for each of RULE_CASES."""
    build, layers, metric, q = RULE_CASES[request.param]
    model = build()
    adapter = get_adapter(model)
    heads = HeadSet(adapter, HeadSpec("linear", layers))
    return (
        model,
        adapter,
        heads,
        ThresholdPolicy(heads, metric, quantile_thresholds(adapter, heads, metric, q)),
    )


def hand_profile(
    projection_layer_ms: float | None = None, depth_ratio: list | None = None, **identity
) -> CostProfile:
    """A small profile with round numbers, for pricing traces by hand."""
    # segment = fixed + layers * per_layer; per_layer grows with rows and KV length.
    return CostProfile(
        identity={
            "format": "earlyexit.profile/1",
            "model_shape": "S",
            "head_architecture": "linear",
            "head_rank": None,
            "device_name": "test",
            "dtype": "float32",
            "graphs": False,
            **identity,
        },
        rows=[1, 2, 4],
        kv_lengths=[10, 20],
        segment_fixed_ms=[[0.1, 0.1], [0.1, 0.1], [0.2, 0.2]],
        layer_ms=[[1.0, 2.0], [1.5, 2.5], [2.5, 3.5]],
        unembed_ms=[0.5, 0.6, 0.8],
        head_ms=0.3,
        decision_ms={"entropy": 0.45, "max-prob": 0.4, "margin": 0.42},
        pass_fixed_ms=0.05,
        projection_layer_ms=projection_layer_ms,
        depth_ratio=depth_ratio,
    )


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """Nothing may reach the hub: the HF_*_OFFLINE variables and the flags `datasets` and
    `huggingface_hub` read at import, with a fresh, empty datasets cache; returns that cache."""
    import datasets
    import huggingface_hub

    cache = tmp_path / "datasets-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    return cache


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: end-to-end against a real SLURM (`make test-slurm`: scripts/slurm_local.sh up, then "
        "EARLYEXIT_SLURM_TESTS=1); skipped otherwise",
    )


def pytest_collection_modifyitems(config, items) -> None:
    import os

    if os.environ.get("EARLYEXIT_SLURM_TESTS") == "1":
        return
    skip = pytest.mark.skip(
        reason="SLURM end-to-end tests run with `make test-slurm` (EARLYEXIT_SLURM_TESTS=1)"
    )
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
