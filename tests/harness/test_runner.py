"""The Hydra app: every config composes, bad values fail before loading, runs are recorded once."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_RUN
from eval_data import write_suite
from hydra import compose, initialize_config_dir
from transformers import GPTNeoXForCausalLM

from earlyexit.exits.calibrate import Calibration
from earlyexit.harness.results import ResultStore
from earlyexit.harness.runner import head_layers, validate
from earlyexit.measure.cost_model import predict
from earlyexit.measure.profile import CostProfile
from earlyexit.model.loading import EMBEDDED_MODEL_DIR, pythia_config
from earlyexit.model.trace import TraceCounts

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
# Small enough for a CPU test, large enough to exercise every stage.
FAST = [
    "bench.prompts=2",
    "bench.max_new_tokens=6",
    "bench.repeats=1",
    "bench.profile_repeats=3",
    "calibration.max_tokens=1024",
    "task.limit=10",
]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_in_every_group_composes_and_validates(group, tmp_path, monkeypatch):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert len(options) >= 2
    # Offline, every task config must resolve before any model loads: here from tiny local files.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = [f"task.data_dir={write_suite(tmp_path)}"] if group == "task" else []
    if (
        group == "model"
    ):  # Pythia's hub training text is not here offline (tests/harness/test_training_text.py)
        data = ["data.source=stdlib"]
    for option in options:
        cfg = config(f"{group}={option}", *data)
        validate(cfg)


# Layer counts of the published Pythia models (Biderman et al., arXiv 2304.01373, Table 1).
PUBLISHED_LAYERS = {"70m": 6, "160m": 12, "410m": 24, "1b": 16, "1.4b": 24, "2.8b": 32}


@pytest.mark.parametrize("size", sorted(PUBLISHED_LAYERS))
def test_pythia_configs_build_the_right_architecture(size):
    cfg = config(f"model=pythia-{size}")
    assert cfg.model.name == f"pythia-{size}"
    arch = pythia_config(cfg.model.name)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(arch)
    layers = PUBLISHED_LAYERS[size]
    assert len(model.gpt_neox.layers) == layers
    # The default heads sit as in the DSSD paper: after round(x) layers, x in linspace(0, L, 6)[1:-1].
    paper = [int(np.round(x)) - 1 for x in np.linspace(0, layers, 6)[1:-1]]
    assert head_layers(cfg, arch.num_hidden_layers) == paper


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["metric.name=confidence"],
            "unknown confidence metric 'confidence'; valid metrics: entropy, margin",
        ),
        (["heads.architecture=conv"], "valid: linear, shared, mlp, lowrank"),
        (["heads.placement=random"], "valid: explicit, even, every"),
        (["calibration.targets=[0.5,1.5]"], "1.5"),
        (["calibration.target=0"], "calibration: .*0"),
        (["heads.placement=explicit"], "non-empty list of layers"),
        (["heads.placement=explicit", "heads.layers=[7]"], r"heads: head layers \[7\] outside \[0, 7\)"),
        (["train.loss=mse"], "unknown loss 'mse'; valid: kl, ce"),
        (["model.dtype=int8"], "model.dtype='int8' is not one of"),
        (["mode=layerskip", "mode.draft_length=-1"], "mode.draft_length must be >= 1, got -1"),
        (
            ["mode=layerskip", "mode.exit_layer=3"],
            r"mode.exit_layer=3 is not a head layer; head layers: \[1, 2, 4, 5\]",
        ),
        (["task.names=[no_such_task]"], "no_such_task"),
        (["bench.prompts=0"], "bench.prompts=0 must be an integer >= 1"),
        (["bench.limit=0"], "bench.limit=0 must be an integer >= 1"),
        (["bench.gen_cap=-4"], "bench.gen_cap=-4 must be an integer >= 1"),
        (
            ["bench.workloads=[heldout,nope]"],
            r"unknown workload: .*'nope'.*Valid workloads: heldout, stdlib_completion",
        ),
        (["bench.workloads=[piqa]"], "'piqa' is a multiple_choice task: it generates nothing"),
        (["calibration.heads=best"], "calibration.heads='best' is not a head choice; valid: all, priced"),
        (
            ["calibration.heads=priced", "calibration.select_prompts=0"],
            "calibration.select_prompts=0 must be an integer >= 1",
        ),
        (
            ["bench.profile=sometimes"],
            "bench.profile='sometimes' is not a profile source; valid: interleaved, cached",
        ),
        (
            ["bench.cuda_graphs=true"],
            "bench.cuda_graphs=true with device=cpu: CUDA graphs need a CUDA device, got 'cpu'",
        ),
    ],
)
def test_bad_values_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(config(*overrides))


def test_pythia_layer_bounds_are_checked_offline():
    with pytest.raises(ValueError, match=r"\[30\] outside \[0, 23\)"):
        validate(config("model=pythia-410m", "heads.placement=explicit", "heads.layers=[30]"))
    validate(
        config("model=pythia-2.8b", "heads.placement=explicit", "heads.layers=[30]", "data.source=stdlib")
    )


def test_cuda_graphs_option_times_both_modes_through_graphs(tmp_path, monkeypatch):
    """The option reaches the engine and the heads for the mode and its `full` baseline alike
    (CPU replay stand-in in place of CUDA graphs, which this machine cannot capture)."""
    import earlyexit.harness.runner as runner
    from earlyexit.model.graphs import ReplayCapture

    monkeypatch.setattr(runner, "default_capture", lambda device: ReplayCapture)
    cfg = config(*TINY_RUN, "bench.cuda_graphs=true", f"cache_dir={tmp_path}")
    metrics = runner.run(cfg, tmp_path)["metrics"]
    assert metrics["graphs_captured"] > 0 and metrics["full_graphs_captured"] > 0
    assert metrics["outputs_equal_full"] and 0 <= metrics["acceptance_rate"] <= 1


@pytest.mark.parametrize("kv", ["propagate", "skip"])
def test_a_lossy_kv_run_scores_held_out_tokens_under_its_rule_and_counts_its_work(tmp_path, kv):
    import earlyexit.harness.runner as runner

    overrides = ("mode=early-exit", f"engine.kv={kv}", "engine.kv_heldout_tokens=512")
    overrides += ("calibration.target=0.8",)
    summary = runner.run(config(*TINY_RUN, *overrides, f"cache_dir={tmp_path}"), tmp_path)
    m, layers = summary["metrics"], summary["num_layers"]
    assert m["heldout_tokens_under_kv"] == 512 and m["heldout_scoring_s"] > 0
    assert 0 < m["heldout_early_exit_share"] < 1 and 0 < m["heldout_agreement_at_target"] <= 1
    exited = sum(n for k, n in m["exit_histogram"].items() if int(k) != layers - 1)
    assert exited > 0, "heads must fire at target 0.8"
    trace = m["trace"]
    # No exited token is ever carried deeper: no pending rows, so no KV fill.
    assert all(pending == 0 for _, _, pending, *_ in trace["segments"])
    projected = sum(n for _, _, n in trace["projections"])
    assert projected == (exited if kv == "propagate" else 0)
    assert m["time_ms.layers_fill"] == 0 and (m["time_ms.kv_projections"] > 0) == (kv == "propagate")
    assert m["layers_per_token"] < layers


def test_priced_heads_are_chosen_on_calibration_prompts_used_everywhere_and_cached(
    tmp_path, monkeypatch, capsys
):
    import earlyexit.harness.runner as runner

    overrides = (
        "mode=dssd",
        "calibration.target=0.95",
        "calibration.heads=priced",
        "calibration.select_prompts=2",
    )
    cfg = config(*TINY_RUN, *overrides, f"cache_dir={tmp_path}")
    summary = runner.run(cfg, tmp_path)
    m, per_head = summary["metrics"], summary["per_head"]
    sel = m["heads_selection"]
    assert m["heads_choice"] == "priced" and m["heads_kept"] == sel["kept"]
    calibrated = Calibration.from_json(summary["calibration"]).thresholds_for(0.95)
    live = [h for h, t in calibrated.items() if math.isfinite(t)]
    assert live and sel["tried"][0]["heads"] == live  # the search starts from every head that can fire
    assert min(sel["tried"], key=lambda s: s["priced_tpot_ms"])["heads"] == sel["kept"]
    for layer, row in per_head.items():
        if layer not in sel["kept"]:  # a dropped head is never evaluated, so it never fires
            assert math.isinf(row["threshold"]) and row["exits_in_decoding"] == 0
    assert {layer for layer, _, n in m["trace"]["checks"] if n} <= set(sel["kept"])
    kept_line = f"heads kept (calibration.heads=priced): {sel['kept']} of {summary['head_layers']}"
    assert kept_line in capsys.readouterr().out

    def must_not_run(*args, **kwargs):
        raise AssertionError("the selection is cached: same heads, thresholds, profile and prompts")

    monkeypatch.setattr(runner, "select_heads", must_not_run)
    again = runner.run(cfg, tmp_path)["metrics"]
    assert again["heads_selection"] == sel


def test_selection_prompts_come_from_calibration_tokens_the_thresholds_were_not_fit_on(caplog):
    from earlyexit.harness.runner import selection_prompts

    stream = torch.arange(3000)
    prompts, fitted = selection_prompts(stream, seq_len=512, max_tokens=2048, n=6, prompt_len=32, seed=0)
    assert fitted == 2048 and len(prompts) == 6
    assert all(len(p) == 32 and p.min() >= 2048 for p in prompts)
    with caplog.at_level("WARNING"):
        prompts, fitted = selection_prompts(stream[:2070], 512, 2048, 6, 32, 0)
    assert fitted == 0 and all(p.max() < 2070 for p in prompts)
    assert "only 22 calibration tokens beyond the 2048 calibrated ones" in caplog.text


def run_app(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONUNBUFFERED"] = "1"  # each line arrives when written: a pipe would buffer "stage 4/5"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *args,
        *FAST,
        f"results.path={tmp_path / 'records.jsonl'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_summary(run_dir: Path, stdout: str) -> None:
    """summary.json of a default run (dssd, target 0.9) against what is known without the code:
    the embedded model's config, the paper's head placement, the benchmark settings (FAST), a
    hand count of the full model's FLOPs; and the printed tables against it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    arch = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    layers, d, vocab = arch["num_hidden_layers"], arch["hidden_size"], arch["vocab_size"]
    assert summary["num_layers"] == layers and summary["mode"] == "dssd" and summary["target"] == 0.9
    assert summary["head_layers"] == [int(np.round(x)) - 1 for x in np.linspace(0, layers, 6)[1:-1]]
    assert summary["head_cost"]["macs"] == d * vocab  # a full-vocabulary linear head
    assert summary["full_head_cost_in_layers"] == pytest.approx(vocab * d / (12 * d * d))
    m = summary["metrics"]
    prompts, new, prompt_len = 2, 6, 32  # FAST and the default bench.prompt_len
    assert m["tokens"] == m["full_tokens"] == prompts * new
    assert m["outputs_equal_full"] and 0 < m["acceptance_rate"] <= 1
    assert m["full_layers_per_token"] == layers
    # Full decode step j (j = 1..new-1) attends over prompt_len + j keys: mean prompt_len + new / 2.
    full_flops = layers * (24 * d * d + 4 * d * (prompt_len + new / 2)) + 2 * d * vocab
    assert m["full_flops_per_token"] == pytest.approx(full_flops)
    assert m["flops_ratio"] == pytest.approx(m["flops_per_token"] / full_flops)
    assert {int(k) for k in m["exit_histogram"]} <= {*summary["head_layers"], layers - 1}
    assert sum(v["exits_in_decoding"] for v in summary["per_head"].values()) == sum(
        n for k, n in m["exit_histogram"].items() if int(k) != layers - 1
    )
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert calibration == summary["calibration"] and calibration["metric"] == "entropy"
    assert [s["target"] for s in summary["exit_shares"]] == calibration["targets"]
    for shares in summary["exit_shares"]:
        parts = [v for k, v in shares.items() if k.startswith("layer_") or k == "final"]
        assert sum(parts) == pytest.approx(1.0) and 0 <= shares["agreement"] <= 1
    at_target = next(s for s in summary["exit_shares"] if s["target"] == 0.9)
    assert m["heldout_early_exit_share"] == pytest.approx(1 - at_target["final"])
    # Stricter targets have higher thresholds: no fewer held-out tokens reach the last layer.
    finals = [s["final"] for s in summary["exit_shares"]]
    assert finals == sorted(finals) and finals[0] < finals[-1]
    # The printed tables show the same numbers.
    assert f"layers {layers}  heads linear at {summary['head_layers']}" in stdout
    printed = re.search(r"^layers per token\s+(\S+)\s+(\S+)$", stdout, re.MULTILINE)
    assert printed.groups() == (f"{m['layers_per_token']:.3f}", f"{layers:.3f}")
    assert f"speedup {m['speedup']:.3f}x " in stdout and f"FLOPs ratio {m['flops_ratio']:.3f} " in stdout
    shares_table = stdout.split("share of held-out tokens leaving at each head")[1]
    assert f"{at_target['final']:.3f}" in shares_table.split("mode dssd")[0]
    # The cost profile was timed between this run's samples (3 rounds over its 2 samples), is
    # stored whole, and prices the run's trace to exactly the recorded prediction.
    assert m["profile_source"] == "interleaved" and m["profile_rounds"] == 3
    profile = CostProfile.load(run_dir / "profile.json")
    assert profile.to_json() == m["profile"] and profile.key == m["profile_key"]
    priced = predict(TraceCounts.from_json(m["trace"]), m["decode_tokens"], profile, "dssd", "entropy")
    assert priced["tpot_ms"] == pytest.approx(m["predicted_tpot_ms"], rel=1e-12)
    assert "timed in 3 rounds between this run's samples (bench.profile=interleaved)" in stdout


def test_default_run_records_once_and_reuses_cached_artifacts(tmp_path):
    first = run_app(tmp_path)
    assert "mode dssd at target 0.9" in first.stdout and "accuracy (early-exit model vs full" in first.stdout
    records = ResultStore(tmp_path / "records.jsonl").load()
    assert len(records) == 1 and records["status"].iloc[0] == "ok"
    row = records.iloc[0]
    assert row["metric.outputs_equal_full"] and 0 <= row["metric.acceptance_rate"] <= 1
    assert row["metric.heldout_early_exit_share"] > 0 and row["metric.flops_per_token"] > 0
    assert not (tmp_path / "cache" / "heads").exists(), "the shipped heads must be reused"
    assert not (tmp_path / "cache" / "profile").exists(), "an interleaved profile is the run's own"
    assert (tmp_path / "run" / "calibration.json").exists() and list((tmp_path / "run").glob("*.log"))
    check_summary(tmp_path / "run", first.stdout)
    # The same config again is skipped; force=true recomputes it; a new mode reuses the calibration.
    run_app(tmp_path)
    assert len(ResultStore(tmp_path / "records.jsonl").load()) == 1
    run_app(tmp_path, "force=true")
    again = run_app(tmp_path, "mode=early-exit", "bench.profile=cached")
    assert "calibration: cached" in again.stderr + again.stdout
    records = ResultStore(tmp_path / "records.jsonl").load()
    assert list(records["config.mode.name"]) == ["dssd", "dssd", "early-exit"]
    early = records.iloc[-1]
    assert not pd.isna(early["metric.acc_delta.stdlib_lambada.acc"])
    # bench.profile=cached: measured once under the cache and reused, the record keeps a copy.
    (cached,) = (tmp_path / "cache" / "profile").glob("*.result.json")
    assert early["metric.profile_source"] == "cached" and early["metric.profile_rounds"] == 3
    assert json.loads(early["metric.profile"]) == CostProfile.load(cached).to_json()
    assert "cached: measured once on this device in 3 rounds" in again.stdout


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = run_app(tmp_path, "-m", "task=none", f"data.source=stdlib,{tmp_path / 'missing.txt'}", check=False)
    assert proc.returncode == 1  # the sweep ran to the end, and says that a job failed
    assert "1 job(s) of this sweep failed" in proc.stderr + proc.stdout
    records = ResultStore(tmp_path / "records.jsonl").load()
    assert sorted(records["status"]) == ["failed", "ok"]
    failed = records[records["status"] == "failed"].iloc[0]
    assert "missing.txt" in failed["error"] and "TextSourceNotAvailableError" in failed["error"]
    assert "job refused before loading" in proc.stderr + proc.stdout


def test_two_job_multirun_through_submitit_local(tmp_path):
    run_app(tmp_path, "-m", "hydra/launcher=submitit_local", "task=none", "metric=entropy,margin")
    records = ResultStore(tmp_path / "records.jsonl").load()
    assert sorted(records["config.metric.name"]) == ["entropy", "margin"]
    assert set(records["status"]) == {"ok"}


def test_slurm_launcher_config_composes_to_submitit_slurm():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min > 0


def test_console_errors_are_one_line_and_point_somewhere(tmp_path):
    """A failing single run prints one line naming the cause; `task=NAME` for an lm-eval task
    without a config says task.names=[NAME]."""
    proc = run_app(tmp_path, "calibration.target=1.5", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: ValueError: calibration: target 1.5 is outside the allowed range (0, 1]"]
    assert "Traceback" not in proc.stderr
    proc = run_app(tmp_path, "task=openbookqa", check=False)
    assert proc.returncode == 2 and "task.names=[openbookqa]" in proc.stderr
    assert "task=none task.names=[openbookqa]" in proc.stderr and "Traceback" not in proc.stderr


def test_every_module_path_a_message_names_exists():
    """Error messages and docs name modules and attributes a user can import."""
    import importlib
    import re

    # Format tags such as "earlyexit.calibration/1" name file formats, not modules.
    pattern = re.compile(r"\bearlyexit(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?![\w/])")
    sources = [
        *sorted((ROOT / "earlyexit").rglob("*.py")),
        ROOT / "README.md",
        *sorted(ROOT.glob("docs/*.md")),
    ]
    names = {m.group(0).rstrip(".") for path in sources for m in pattern.finditer(path.read_text())}
    assert len(names) > 20
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert missing == []


def test_ctrl_c_ends_with_one_line(tmp_path):
    """SIGINT during a run: one line saying what is kept, no traceback, exit status 130."""
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONUNBUFFERED"] = "1"  # each line arrives when written: a pipe would buffer "stage 4/5"
    cmd = [
        sys.executable, str(ROOT / "run.py"), *FAST, "bench.repeats=50",
        f"results.path={tmp_path / 'records.jsonl'}", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in proc.stdout:  # wait until the run is decoding, then interrupt it
        seen.append(line)
        if "stage 4/5" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[0]
    assert any("stage 4/5" in line for line in seen), "".join(seen)[-2000:]
    assert proc.returncode == 130, rest[-2000:]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert rest.strip().splitlines()[-1].startswith("interrupted: every finished run is stored")


def test_the_noise_spread_compares_repeats_of_one_prompt_not_prompts():
    """Prompts differ legitimately (a 2-token answer vs a 48-token completion); only repeats of the
    same prompt measure the machine's noise."""
    from earlyexit.decoding import DecodeStats
    from earlyexit.harness.runner import noise_samples
    from earlyexit.measure.machine import tpot_spread
    from earlyexit.measure.protocol import Measured

    def stats(tpot: float) -> DecodeStats:
        return DecodeStats(tokens=11, ttft_s=0.0, total_s=10 * tpot)

    slow, fast = 0.05, 0.005  # ten times apart
    quiet = Measured("full", samples=[stats(slow), stats(fast), stats(slow), stats(fast)], prompts=2)
    assert tpot_spread(noise_samples(quiet)) == pytest.approx(1.0)
    noisy = Measured("full", samples=[stats(slow), stats(fast), stats(4 * slow), stats(fast)], prompts=2)
    assert tpot_spread(noise_samples(noisy)) == pytest.approx(4.0)
    once = Measured("full", samples=[stats(slow), stats(fast)], prompts=2)
    assert tpot_spread(noise_samples(once)) == pytest.approx(10.0)  # one repeat: the raw samples
