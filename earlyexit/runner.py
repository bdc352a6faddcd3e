"""One run: load the model, get heads (cached or trained), calibrate, and report.

Everything cheap to check is checked before the model loads, so a typo in a sweep fails
in a second, not after minutes of loading.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from earlyexit.adapter import get_adapter
from earlyexit.artifacts import prepare_heads
from earlyexit.calibrate import calibrate, heldout_check, separation_report, validate_targets
from earlyexit.confidence import get_metric
from earlyexit.data import token_streams
from earlyexit.head_stats import collect_head_stats, exit_shares
from earlyexit.heads import HeadSpec, head_cost_ratio, place_heads
from earlyexit.loading import EMBEDDED_MODEL_DIR, PYTHIA_SIZES, load_model, pythia_size, resolve_model
from earlyexit.train import TrainConfig, head_agreement

log = logging.getLogger(__name__)
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def known_num_layers(model_name: str) -> int | None:
    """Layer count without loading weights, where it is knowable offline."""
    size = pythia_size(model_name)
    if size is not None:
        return PYTHIA_SIZES[size].num_hidden_layers
    path = Path(resolve_model(model_name))
    config = path / "config.json" if path.is_dir() else EMBEDDED_MODEL_DIR / "none"
    if config.exists():
        return json.loads(config.read_text())["num_hidden_layers"]
    return None


def head_layers(cfg: DictConfig, num_layers: int) -> list[int]:
    h = cfg.heads
    return place_heads(num_layers, h.placement, list(h.layers) if h.layers else None, h.n, h.every)


def train_config(cfg: DictConfig) -> TrainConfig:
    return TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any model is loaded, naming the key, the value and what is allowed."""
    get_metric(cfg.metric.name)
    HeadSpec(cfg.heads.architecture, (0,))
    validate_targets(list(cfg.calibration.targets))
    train_config(cfg).validate()
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.model.dtype!r} is not one of {', '.join(DTYPES)}")
    # Placement names and counts are checked even when the layer count is not known offline
    # (a hub model not loaded yet); layer bounds are checked whenever it is.
    num_layers = known_num_layers(cfg.model.name)
    try:
        head_layers(cfg, num_layers or 1_000_000)
    except ValueError as err:
        raise ValueError(f"heads: {err}") from None


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train-or-load heads, calibrate, check on held-out data; return (and print) the summary."""
    validate(cfg)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model.name, dtype=DTYPES[cfg.model.dtype], device=cfg.device)
    adapter = get_adapter(model)
    spec = HeadSpec(cfg.heads.architecture, tuple(head_layers(cfg, adapter.num_layers)), cfg.heads.rank)
    tcfg = train_config(cfg)
    train, calib, heldout = token_streams(tokenizer, cfg.data.source, cfg.data.heldout_fraction)
    heads, _ = prepare_heads(adapter, spec, tcfg, cfg.data.source, train, cfg.cache_dir)

    metric = cfg.metric.name
    targets = validate_targets(list(cfg.calibration.targets))
    seq_len, max_tokens = tcfg.seq_len, cfg.calibration.max_tokens
    cal_stats = collect_head_stats(adapter, heads, calib, seq_len, max_tokens, desc="calibration")
    cal = calibrate(cal_stats.scores[metric], cal_stats.agree, metric, targets)
    held = collect_head_stats(adapter, heads, heldout, seq_len, max_tokens, desc="held-out")
    shares = pd.DataFrame(
        [{"target": t, **exit_shares(held, metric, cal.thresholds_for(t))} for t in targets]
    ).set_index("target")
    summary = {
        "model": adapter.model_id,
        "num_layers": adapter.num_layers,
        "head_layers": heads.layers,
        "architecture": heads.spec.architecture,
        "head_cost": heads.cost_per_token(),
        "full_head_cost_in_layers": head_cost_ratio(adapter),
        "metric": metric,
        "heldout_agreement": head_agreement(adapter, heads, heldout, seq_len, max_tokens),
        "separation": separation_report(held.scores, held.agree),
        "calibration": cal.to_json(),
        "heldout_check": heldout_check(cal, held.scores[metric], held.agree),
        "exit_shares": shares.reset_index().to_dict(orient="records"),
        "early_exit_share_at_loosest_target": 1 - shares["final"].iloc[0],
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cal.save(out / "calibration.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    print(format_summary(summary, shares))
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)


def format_summary(summary: dict, shares: pd.DataFrame) -> str:
    sep = pd.DataFrame(summary["separation"]).pivot(index="layer", columns="metric", values="auroc")
    agree = pd.Series(summary["heldout_agreement"], name="agreement")
    check = pd.DataFrame(summary["heldout_check"]).pivot(
        index="target", columns="layer", values="heldout_agreement"
    )
    cost = summary["head_cost"]
    lines = [
        f"model {summary['model']}  layers {summary['num_layers']}  heads {summary['architecture']} "
        f"at {summary['head_layers']}  (one head = {cost['layers_equivalent']:.2f} layers)",
        "",
        "held-out agreement of each head with the final layer:",
        agree.to_string(float_format="%.3f"),
        "",
        "AUROC of each metric for predicting agreement (higher separates better):",
        sep.to_string(float_format="%.3f"),
        "",
        "calibration check: agreement achieved on held-out tokens that pass each head's threshold",
        check.to_string(float_format="%.3f"),
        "",
        f"share of held-out tokens leaving at each head, metric {summary['metric']}:",
        shares.to_string(float_format="%.3f"),
    ]
    return "\n".join(lines)
