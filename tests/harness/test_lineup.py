"""The baselines in a run: refused before loading when they cannot run, recorded beside the mode."""

import json
import math

import pytest
from conftest import TINY_RUN
from hydra import compose, initialize_config_dir

from earlyexit.harness import runner
from earlyexit.harness.runner import validate
from tests.harness.test_runner import CONF


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bench.baselines=[hf_generate,speculate]"], r"'speculate'.*hf_generate, assisted, prompt_lookup"),
        (
            ["bench.baselines=[hf_early_exit]"],
            "model embedded is GPT-NeoX, where transformers' assistant_early_exit",
        ),
        (
            ["model=pythia-70m", "bench.baselines=[assisted]"],
            "model pythia-70m has no default draft model",
        ),
        (["bench.baselines=[assisted]", "bench.draft_model=pythia-410m"], "bench.draft_model=pythia-410m"),
        (
            ["bench.baselines=[assisted]", "bench.num_assistant_tokens=0"],
            "bench.num_assistant_tokens must be",
        ),
        (["bench.baselines=[assisted]", "bench.assistant_confidence_threshold=1.5"], r"in \[0, 1\)"),
        (
            ["mode=del", "mode.candidate_layers=[3]"],
            r"mode.candidate_layers=\[3\] must be a non-empty subset",
        ),
    ],
)
def test_a_lineup_that_cannot_run_is_refused_before_any_model_loads(overrides, message, hf_offline):
    with pytest.raises(ValueError, match=message):
        validate(config(*overrides))


def test_a_draft_with_another_tokenizer_is_refused_naming_both(tmp_path, hf_offline):
    from conftest import tiny_gpt_neox
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = tmp_path / "other-draft"
    tiny_gpt_neox(layers=1, vocab=1024).save_pretrained(other)
    vocab = {f"t{i}": i for i in range(1024)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    ).save_pretrained(other)
    with pytest.raises(ValueError, match=rf"(?s)embedded.*{other.name}|{other.name}.*embedded"):
        validate(config("bench.baselines=[assisted]", f"bench.draft_model={other}"))


def test_the_embedded_model_runs_the_lineup_and_records_each_baseline_beside_the_mode(tmp_path):
    overrides = [*TINY_RUN, "mode=dssd", "bench.baselines=[hf_generate,assisted,prompt_lookup]"]
    summary = runner.run(config(*overrides, f"cache_dir={tmp_path}"), tmp_path)
    m = summary["metrics"]
    assert m["baselines"] == ["hf_generate", "assisted", "prompt_lookup"]
    how = m["baseline.assisted.predicted"]
    assert how.startswith("priced") and "draft's own" in how
    assert "draft's own" not in m["baseline.prompt_lookup.predicted"]
    assert m["baseline.draft_profile"]["identity"]["model_shape"].startswith("GPTNeoXForCausalLM layers=2")
    assert m["baseline.assisted.settings"]["draft_model"] == "embedded-draft"
    assert m["baseline.assisted.settings"]["draft_fingerprint"].startswith("weights=")
    for name in m["baselines"]:
        prefix = f"workload.heldout.baseline.{name}."
        assert m[prefix + "outputs_equal_full"], f"{name} is greedy: it emits full's tokens in float32"
        assert m[prefix + "speedup_ci_low"] <= m[prefix + "speedup"] <= m[prefix + "speedup_ci_high"]
        assert m[prefix + "timing_samples"] == 2 and m[prefix + "flops_ratio"] > 0
        assert not math.isnan(m[f"workload.overall.baseline.{name}.speedup"])
        assert m[prefix + "predicted_tpot_ms"] > 0 and math.isfinite(m[prefix + "prediction_error"])
    # transformers' greedy loop runs full's passes: priced alike (its overhead is the prediction error).
    assert m["workload.heldout.baseline.hf_generate.predicted_decode_speedup"] == pytest.approx(1.0)
    assisted = "workload.heldout.baseline.assisted."
    assert 0 < m[assisted + "predicted_draft_tpot_ms"] < m[assisted + "predicted_tpot_ms"]
    assert m["workload.heldout.baseline.hf_generate.mean_accepted_tokens"] == pytest.approx(1.0)
    assert m["workload.heldout.baseline.hf_generate.flops_ratio"] == pytest.approx(1.0)
    assert m["workload.heldout.baseline.assisted.acceptance_rate"] >= 0
    assert "acceptance" not in json.dumps(m["baseline.prompt_lookup.settings"])  # settings, not results


def test_a_del_run_is_recorded_lossless_and_priced(tmp_path):
    summary = runner.run(config(*TINY_RUN, "mode=del", f"cache_dir={tmp_path}"), tmp_path)
    m = summary["metrics"]
    assert m["outputs_equal_full"] and m["workload.heldout.outputs_equal_full"]
    assert m["workload.heldout.prompts_differing"] == 0 and "first_divergence_prompt" not in m
    assert m["predicted_tpot_ms"] > 0 and m["workload.heldout.mean_accepted_tokens"] >= 1.0
