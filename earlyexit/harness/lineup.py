"""The alternatives a user would pick instead, timed beside `full` and the mode in the same run.

`bench.baselines` names them (measure/baselines.py): transformers' greedy `generate`, draft-model
speculative decoding (`assisted`), prompt lookup and transformers' own LayerSkip. They run on
every workload's prompts, interleaved with `full` and the mode, with the same stops, so each gets
the same speedup interval, acceptance and quality as the mode. Everything that can be checked
without loading a model is checked in `check_lineup` (the run's `validate`): unknown names, a
draft model that cannot be found offline, a draft with another tokenizer or a larger size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from earlyexit.decoding import Strategy
from earlyexit.measure.baselines import check_baselines, hf_early_exit_unsupported, make_baseline
from earlyexit.measure.cost_model import predict
from earlyexit.measure.divergence import logit_margin
from earlyexit.measure.profile import CostProfile
from earlyexit.measure.workloads import WorkloadResult, measured_named, overall_metrics, workload_metrics
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.draft import check_draft_model, default_draft_model, load_draft_model
from earlyexit.model.loading import ModelNotAvailableError, pythia_size
from earlyexit.model.trace import TraceCounts

log = logging.getLogger(__name__)

# How a baseline's predicted time is made (``baseline.<B>.predicted``): what ran after the first token
# (measure/baselines.py `decode_trace`) priced with the engine's component profile. transformers' own
# generation loop, cache and candidate bookkeeping cost more per pass than the engine's pass_fixed,
# so the prediction error is mostly that overhead: the part of the time that is not computation.
PRICED = (
    "priced: the target's passes after the first token, as full-depth segments of their rows, with "
    "this run's cost profile"
)
PRICED_DRAFT = "; the draft model's passes with the draft's own cached profile ({key})"
PRICED_CAVEAT = (
    "; transformers' generation loop and cache are not in the profile (the engine's per-pass cost "
    "is), so prediction_error is mostly their overhead"
)
# Architectures transformers' `assistant_early_exit` cannot run (known without loading the model).
GPT_NEOX_NAMES = ("embedded",)


# bench.<key> -> make_baseline's keyword.
BASELINE_KEYS = {
    "num_assistant_tokens": "num_assistant_tokens",
    "assistant_confidence_threshold": "confidence_threshold",
    "lookup_tokens": "lookup_tokens",
    "lookup_ngram": "lookup_ngram",
}


def baseline_names(cfg: DictConfig) -> list[str]:
    """``bench.baselines`` as a list (configs written before the key existed had none)."""
    names = OmegaConf.select(cfg, "bench.baselines", default=None) or []
    return [str(n) for n in names]


def draft_model_name(cfg: DictConfig) -> str:
    """``bench.draft_model``, or the target's default draft; refused when there is none."""
    chosen = OmegaConf.select(cfg, "bench.draft_model", default=None)
    if chosen:
        return str(chosen)
    draft = default_draft_model(cfg.model.name)
    if draft is None:
        raise ValueError(
            f"bench.baselines has assisted but model {cfg.model.name} has no default draft model "
            "(nothing smaller with its tokenizer is known); set bench.draft_model=<hub id or local "
            "directory with the same tokenizer>, or drop assisted from bench.baselines"
        )
    return draft


def _known_gpt_neox(name: str) -> bool:
    return name in GPT_NEOX_NAMES or pythia_size(name) is not None


def check_lineup(cfg: DictConfig) -> list[str]:
    """Refuse a bad lineup before any model loads; returns warnings (e.g. a draft as large as the target)."""
    names = baseline_names(cfg)
    check_baselines(names)
    warnings: list[str] = []
    for key in ("num_assistant_tokens", "lookup_tokens", "lookup_ngram"):
        value = OmegaConf.select(cfg, f"bench.{key}", default=1)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"bench.{key} must be an integer >= 1, got {value!r}")
    threshold = OmegaConf.select(cfg, "bench.assistant_confidence_threshold", default=0.4)
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"bench.assistant_confidence_threshold must be in [0, 1), got {threshold}")
    if "hf_early_exit" in names and _known_gpt_neox(cfg.model.name):
        raise ValueError(
            f"bench.baselines has hf_early_exit but model {cfg.model.name} is GPT-NeoX, where "
            "transformers' assistant_early_exit cannot run (it raises IndexError: it lowers "
            "config.num_hidden_layers, which GPT-NeoX's layer loop ignores); it runs on Llama-family "
            "models. mode=layerskip is this harness's LayerSkip on any model"
        )
    if "assisted" in names:
        revision = OmegaConf.select(cfg, "bench.draft_revision", default=None)
        target_revision = OmegaConf.select(cfg, "model.revision", default=None)
        draft = draft_model_name(cfg)
        try:
            warnings += check_draft_model(cfg.model.name, draft, revision, target_revision)
        except ModelNotAvailableError as err:  # a refusal of the config, like any bad value
            raise ValueError(f"bench.draft_model={draft}: {err}") from None
    return warnings


@dataclass
class Lineup:
    """The baselines built for a run and what each records about its settings."""

    strategies: list[Strategy] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    draft: Any = None  # the draft model `assisted` runs with, if any


def build_lineup(cfg: DictConfig, adapter: ModelAdapter, head_layers: list[int]) -> Lineup:
    """The run's baselines, on the loaded model (and its draft, loaded here), in `bench.baselines` order.

    transformers' LayerSkip exits at ``bench.hf_exit_layer``, by default the deepest head layer, the
    layer `mode=layerskip` drafts from by default: the two LayerSkips are then comparable.
    """
    names = baseline_names(cfg)
    lineup = Lineup()
    if not names:
        return lineup
    model, b = adapter.model, cfg.bench
    draft, draft_about, fingerprint = None, {}, None
    if "assisted" in names:
        name, revision = draft_model_name(cfg), OmegaConf.select(cfg, "bench.draft_revision", default=None)
        draft, fingerprint = load_draft_model(name, adapter.dtype, str(adapter.device), revision)
        draft_about = {"draft_model": name}
        lineup.draft = draft
    if "hf_early_exit" in names:
        reason = hf_early_exit_unsupported(model)
        if reason is not None:
            raise ValueError(f"bench.baselines: hf_early_exit cannot run on this model: {reason}")
    exit_layer = OmegaConf.select(cfg, "bench.hf_exit_layer", default=None)
    exit_layer = head_layers[-1] if exit_layer is None else int(exit_layer)
    # Settings the config gives; make_baseline's defaults (transformers') for the rest.
    given = {arg: b[key] for key, arg in BASELINE_KEYS.items() if b.get(key) is not None}
    for name in names:
        strategy = make_baseline(
            name, model, draft=draft if name == "assisted" else None, exit_layer=exit_layer,
            draft_fingerprint=fingerprint, **given,
        )  # fmt: skip
        lineup.strategies.append(strategy)
        lineup.settings[name] = {**strategy.settings(), **(draft_about if name == "assisted" else {})}
    return lineup


def divergence_margin(result: WorkloadResult, name: str, fields: dict, model: Any) -> float | None:
    """`full`'s logit margin where ``name``'s outputs first part from full's (None when equal)."""
    if "first_divergence_prompt" not in fields:
        return None
    prompt, position = fields["first_divergence_prompt"], fields["first_divergence_position"]
    full_out = result.measured[0].ids[prompt]
    if position >= len(full_out):  # full's output ended there (EOS, stop or budget): no choice to weigh
        return None
    return logit_margin(model, result.workload.prompts[prompt].ids, full_out, position)


def predicted_tpot_ms(summary: dict, profile: CostProfile, draft_profile: CostProfile | None = None) -> float:
    """A strategy's time per token after the first, priced from its traces (``trace``, and
    ``draft_trace`` with the draft's profile) as `full`'s work is: full-depth segments, no exits."""
    tokens = summary["decode_tokens"]
    total = predict(TraceCounts.from_json(summary["trace"]), tokens, profile, "full", None)["tpot_ms"]
    if "draft_trace" in summary:
        if draft_profile is None:
            raise ValueError("draft-model passes need the draft's cost profile to price them")
        draft = TraceCounts.from_json(summary["draft_trace"])
        total += predict(draft, tokens, draft_profile, "full", None)["tpot_ms"]
    return total


def baseline_prediction(
    result: WorkloadResult, name: str, profile: CostProfile, draft_profile: CostProfile | None
) -> dict[str, float]:
    """``predicted_tpot_ms``, its error against the measured mean and the predicted decode speedup
    over `full` on the same workload (full priced by the same profile)."""
    mine, full = measured_named(result, name).summary(), result.measured[0].summary()
    if not mine["decode_tokens"] or not full["decode_tokens"]:
        return {}
    predicted = predicted_tpot_ms(mine, profile, draft_profile)
    out = {"predicted_tpot_ms": predicted, "prediction_error": predicted / mine["tpot_ms_mean"] - 1}
    out["predicted_decode_speedup"] = predicted_tpot_ms(full, profile) / predicted
    if "draft_trace" in mine:
        draft = TraceCounts.from_json(mine["draft_trace"])
        out["predicted_draft_tpot_ms"] = predict(draft, mine["decode_tokens"], draft_profile, "full", None)[
            "tpot_ms"
        ]
    return out


def lineup_record(
    results: list[WorkloadResult],
    lineup: Lineup,
    num_layers: int,
    model: Any,
    seed: int,
    profile: CostProfile,
    draft_profile: CostProfile | None = None,
) -> dict[str, Any]:
    """``baselines``, ``baseline.<B>.settings`` and ``workload.<W>.baseline.<B>.*`` (and overall),
    each baseline's time per token priced with `profile` (and the draft's with `draft_profile`)."""
    if not lineup.strategies:
        return {}
    names = [s.name for s in lineup.strategies]
    out: dict[str, Any] = {"baselines": names}
    if draft_profile is not None:
        out["baseline.draft_profile"] = draft_profile.to_json()  # the record prices again on its own
    for name in names:
        out[f"baseline.{name}.settings"] = lineup.settings[name]
        drafts = name == "assisted" and draft_profile is not None
        how = PRICED + (PRICED_DRAFT.format(key=draft_profile.key) if drafts else "") + PRICED_CAVEAT
        out[f"baseline.{name}.predicted"] = how
        for result in results:
            fields = workload_metrics(result, name, num_layers, seed=seed)
            fields.update(baseline_prediction(result, name, profile, draft_profile))
            margin = divergence_margin(result, name, fields, model)
            if margin is not None:
                fields["divergence_margin"] = margin
            if not fields["outputs_equal_full"]:
                log.warning(
                    "%s: %s's output differs from full's on %d prompt(s), first at prompt %d token %d "
                    "(full's logit margin there: %s); reported in the record",
                    result.workload.name, name, fields["prompts_differing"],
                    fields["first_divergence_prompt"], fields["first_divergence_position"],
                    "n/a" if margin is None else f"{margin:.3g}",
                )  # fmt: skip
            out.update({f"workload.{result.workload.name}.baseline.{name}.{k}": v for k, v in fields.items()})
        overall = overall_metrics(results, name, num_layers, seed=seed)
        out.update({f"workload.overall.baseline.{name}.{k}": v for k, v in overall.items()})
    return out


__all__ = [
    "Lineup",
    "baseline_names",
    "baseline_prediction",
    "build_lineup",
    "check_lineup",
    "divergence_margin",
    "draft_model_name",
    "lineup_record",
    "predicted_tpot_ms",
]
