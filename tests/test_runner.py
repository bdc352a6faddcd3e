"""The Hydra app: configs compose, bad values fail before loading, the default run reports exits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from earlyexit.loading import EMBEDDED_MODEL_DIR
from earlyexit.runner import run, validate

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("metric.name=confidence", "unknown confidence metric 'confidence'; valid metrics: entropy, margin"),
        ("heads.architecture=conv", "valid: linear, shared, mlp, lowrank"),
        ("heads.placement=random", "valid: explicit, even, every"),
        ("calibration.targets=[0.5,1.5]", "1.5"),
        ("calibration.targets=[0]", "0"),
        ("heads.placement=explicit", "non-empty list of layers"),
        ("+heads.layers=[7]", r"heads: head layers \[7\] outside \[0, 7\)"),
        ("train.loss=mse", "unknown loss 'mse'; valid: kl, ce"),
        ("model.dtype=int8", "model.dtype='int8' is not one of"),
    ],
)
def test_bad_values_fail_before_any_model_loads(override, message):
    overrides = [override]
    if override.startswith("+heads.layers"):
        overrides = ["heads.placement=explicit", "heads.layers=[7]"]
    with pytest.raises(ValueError, match=message):
        validate(config(*overrides))


def test_pythia_layer_bounds_are_checked_offline():
    with pytest.raises(ValueError, match=r"\[30\] outside \[0, 23\)"):
        validate(config("model=pythia-410m", "heads.placement=explicit", "heads.layers=[30]"))
    validate(config("model=pythia-2.8b", "heads.placement=explicit", "heads.layers=[30]"))


@pytest.mark.skipif(
    not list((EMBEDDED_MODEL_DIR / "heads").glob("*.safetensors")),
    reason="embedded model's heads not shipped yet",
)
def test_default_run_reports_exits_with_shipped_heads(tmp_path, capsys):
    summary = run(config("calibration.max_tokens=2048", f"cache_dir={tmp_path}"), output_dir=tmp_path)
    assert not (tmp_path / "heads").exists(), "shipped heads must be reused, not retrained"
    assert (tmp_path / "calibration.json").exists() and (tmp_path / "summary.json").exists()
    assert summary["early_exit_share_at_loosest_target"] > 0.3
    assert "share of held-out tokens leaving at each head" in capsys.readouterr().out
