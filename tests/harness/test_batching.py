"""bench.batch_size in a run: refused before loading when it cannot run, recorded per size beside batch 1."""

import math

import pytest
from conftest import TINY_RUN

from earlyexit.harness import runner
from earlyexit.harness.report import format_summary
from earlyexit.harness.runner import validate
from tests.harness.test_lineup import config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bench.batch_size=0"], r"bench.batch_size must hold integers >= 1, got \[0\]"),
        (["bench.batch_size=[1,2,64]"], "a batch of 64 needs as many prompts, and the workloads have 8"),
        (["bench.batch_size=[1,4]", "bench.limit=2"], "a batch of 4 needs as many prompts, .* have 2"),
    ],
)
def test_bad_batch_sizes_are_refused_before_any_model_loads(overrides, message, hf_offline):
    with pytest.raises(ValueError, match=message):
        validate(config(*overrides))


def test_batches_with_cuda_graphs_are_refused_naming_why():
    from earlyexit.harness.batching import check_batching

    check_batching(config("bench.batch_size=[1]", "bench.cuda_graphs=true"))  # batch 1: graphs as today
    with pytest.raises(
        ValueError, match=r"batch_size=\[1, 2\] with bench.cuda_graphs=true: graphs are captured"
    ):
        check_batching(config("bench.batch_size=[1,2]", "bench.cuda_graphs=true"))


def test_a_run_with_batch_sizes_records_each_size_beside_full_and_batched_generate(tmp_path):
    overrides = [*TINY_RUN, "mode=dssd", "bench.prompts=4", "bench.batch_size=[1,2,4]"]
    summary = runner.run(config(*overrides, f"cache_dir={tmp_path}"), tmp_path)
    m = summary["metrics"]
    assert m["batch_sizes"] == [1, 2, 4]
    for size in (1, 2, 4):
        w = f"batch.{size}.workload.heldout."
        assert m[w + "outputs_equal_full"], f"dssd is lossless at batch {size}"
        assert (
            m[w + "throughput_speedup_ci_low"]
            <= m[w + "throughput_speedup"]
            <= m[w + "throughput_speedup_ci_high"]
        )
        assert m[w + "timing_samples"] == 4 // size  # one repeat, whole batches of the 4 prompts
        assert m[w + "tokens_per_s"] > 0 and m[w + "full_tokens_per_s"] > 0 and m[w + "seq_tpot_ms"] > 0
        assert m[w + "predicted_speedup"] > 0 and math.isfinite(m[w + "prediction_error"])
        assert m[w + "baseline.hf_generate.outputs_equal_full"]
        assert m[w + "baseline.hf_generate.throughput_speedup"] > 0
        assert m[f"batch.{size}.trace"]["passes"] > 0 and m[f"batch.{size}.decode_tokens"] > 0
    printed = format_summary(summary)
    assert "batches: each against full at the same batch size B" in printed
    b4 = next(line for line in printed.splitlines() if line.startswith("4 ") and "heldout" in line)
    assert f"{m['batch.4.workload.heldout.throughput_speedup']:.3f}x" in b4


def test_the_profile_times_rows_up_to_the_largest_batch():
    from earlyexit.harness.batching import profile_rows

    assert profile_rows(config("bench.batch_size=[1,2,16]"), 8) == 16
    assert profile_rows(config("bench.batch_size=[1,4]"), 8) == 8
    assert profile_rows(config(), 8) == 8
