"""The alternatives a user would pick instead, from transformers itself, behind `Strategy.generate`.

So the timing protocol can interleave them with `full` and the modes, prompt by prompt:

- ``hf_generate``: transformers' greedy ``generate`` with its KV cache (the speed reference);
- ``assisted``: ``generate(assistant_model=draft)``, draft-model speculative decoding, greedy;
- ``prompt_lookup``: ``generate(prompt_lookup_num_tokens=N)``, drafts copied from the prompt;
- ``hf_early_exit``: ``generate(assistant_early_exit=E)``, transformers' LayerSkip. It lowers
  ``config.num_hidden_layers`` while drafting, which GPT-NeoX's layer loop ignores, so on Pythia it
  raises IndexError (DESIGN.md); `hf_early_exit_unsupported` says so before any timing.

Every baseline stops where the engine's modes stop (the budget, EOS included in the output, stop
strings checked token by token) and returns the very ids `Run.emit` would, so outputs compare with
`full`'s token for token. Where transformers accepts several tokens in one step, its output is cut
afterwards exactly as `Run.emit` cuts a run of accepted drafts.

Statistics are counted by hooks installed for one call and removed after it, never globally:
a forward hook on the target (and draft) model records every pass's rows, KV length, logits rows
and depth (Python ints only; FLOPs are computed after the clock stops, like `Run.finish`), and a
wrapper on the call's candidate generator records drafts and acceptance (`_CandidateCounts`).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from transformers import GenerationConfig, PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.utils import is_sklearn_available

from earlyexit.decoding import DecodeResult, DecodeSettings, DecodeStats
from earlyexit.decoding.stops import StopCheck
from earlyexit.model.adapter import ModelAdapter, get_adapter
from earlyexit.model.device import synchronize
from earlyexit.model.engine import ExitEngine
from earlyexit.model.flops import attention_flops, linear_flops, unembed_flops
from earlyexit.model.trace import TraceCounts

__all__ = [
    "BASELINES",
    "HFBaseline",
    "PassRecord",
    "check_baselines",
    "decode_trace",
    "first_token_pass",
    "hf_early_exit_unsupported",
    "make_baseline",
]

BASELINES = ("hf_generate", "assisted", "prompt_lookup", "hf_early_exit")

# transformers' defaults (GenerationConfig._get_default_generation_params, 5.x), set explicitly.
NUM_ASSISTANT_TOKENS = 20
ASSISTANT_SCHEDULE = "constant"
CONFIDENCE_THRESHOLD = 0.4
LOOKUP_TOKENS = 10
LOOKUP_NGRAM = 2


def check_baselines(names: Sequence[str]) -> None:
    """Refuse unknown or repeated baseline names (before anything loads), naming the valid ones."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(
            f"unknown baseline(s) {', '.join(map(repr, unknown))}; valid: {', '.join(BASELINES)}"
        )
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(
            f"baseline(s) listed more than once: {', '.join(repeated)}; valid: {', '.join(BASELINES)}"
        )


# ----------------------------------------------------------------------------- what ran, counted


@dataclass(frozen=True)
class PassRecord:
    """One forward pass of a model inside ``generate``: what its FLOPs are computed from."""

    layers: int  # layers run (fewer than the model has while transformers' LayerSkip drafts)
    rows: int  # tokens fed
    kv_len: int  # keys attended over (cached + fed)
    logits_rows: int  # rows the LM head computed
    seq: int = 0  # order among the call's passes of every model (the draft's and the target's)

    @property
    def prefill(self) -> bool:
        """A pass over an empty cache: it starts with the prompt."""
        return self.kv_len == self.rows


class _PassLog:
    """Forward hook: every pass of one model, as ints (no timer, no sync; priced after the clock)."""

    def __init__(self, model: PreTrainedModel, order: Iterator[int] | None = None) -> None:
        self.base = getattr(model, model.base_model_prefix)
        self.passes: list[PassRecord] = []
        self.order = order if order is not None else itertools.count()

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        rows = ids.shape[1]
        cache = output.past_key_values
        kv = cache.get_seq_length() if cache is not None else rows
        layers = self.base.config.num_hidden_layers  # lowered while transformers' LayerSkip drafts
        self.passes.append(PassRecord(layers, rows, kv, output.logits.shape[1], next(self.order)))


class _CandidateCounts:
    """Drafts and acceptance, counted by wrapping the candidate generator of one ``generate`` call.

    transformers builds it per call in ``GenerationMixin._get_candidate_generator``; this patches
    that method on the model instance for the call (restored after it) and wraps the returned
    generator's ``get_candidates`` (candidates beyond ``input_ids`` = drafts of this step) and
    ``update_candidate_strategy(input_ids, scores, num_matches)`` (the drafts the target accepted,
    after transformers' own cut at the budget and at EOS). Every step of the assisted loop calls
    each once around one target pass, so drafts, accepted and steps with drafts (verifications)
    are exactly what transformers did.
    """

    def __init__(self) -> None:
        self.drafted = self.accepted = self.verifications = 0
        self.accepted_per_step: list[int] = []

    def wrap(self, build):
        def build_and_wrap(*args, **kwargs):
            generator = build(*args, **kwargs)
            get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

            def counted_candidates(input_ids, *a, **kw):
                candidates, logits = get_candidates(input_ids, *a, **kw)
                n = candidates.shape[1] - input_ids.shape[1]
                self.drafted += n
                self.verifications += n > 0
                return candidates, logits

            def counted_update(input_ids, scores, num_matches):
                self.accepted += int(num_matches)
                self.accepted_per_step.append(int(num_matches))
                return update(input_ids, scores, num_matches)

            generator.get_candidates = counted_candidates
            generator.update_candidate_strategy = counted_update
            return generator

        return build_and_wrap


class _FirstToken(BaseStreamer):
    """Notes when `generate` hands out its first new token (the prompt is put first)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.puts, self.first = device, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            synchronize(self.device)
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class _StopCriteria(StoppingCriteria):
    """`StopCheck` as a transformers stopping criterion, checked on every prefix of the output.

    `StopCheck.hit` looks only at the output's tail, assuming every shorter prefix was checked;
    an assisted step adds several tokens at once, so each new prefix is checked in turn (the
    same decodes the engine's modes do), and a stop that a token inside the step completed ends
    the generation after that step.
    """

    def __init__(self, stop: StopCheck, prompt_len: int) -> None:
        self.stop, self.prompt_len, self.out = stop, prompt_len, []

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        new = input_ids[0, self.prompt_len + len(self.out) :].tolist()
        hit = False
        for tok in new:
            self.out.append(tok)
            hit = hit or self.stop.hit(self.out)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)


def emitted(tokens: Sequence[int], budget: int, eos: int | None, stop: StopCheck | None) -> list[int]:
    """What `Run.emit` keeps of ``tokens``: up to the budget, EOS (included) or a stop hit (included)."""
    ids: list[int] = []
    for tok in tokens:
        if len(ids) >= budget or (eos is not None and ids and ids[-1] == eos):
            break
        ids.append(int(tok))
        if stop is not None and stop.hit(ids):
            break
    return ids


class _Shape:
    """Analytic FLOPs of a model's passes, counted as `ExitEngine.flops_of` counts the engine's:
    2 FLOPs per weight per row for the layers' Linears, attention as QK^T and AV over every key
    attended (FlopCounterMode's convention), the LM head per logits row; norms and elementwise free."""

    def __init__(self, adapter: ModelAdapter) -> None:
        per_layer = [linear_flops(layer) for layer in adapter.layers]
        self.prefix = [sum(per_layer[:i]) for i in range(len(per_layer) + 1)]
        self.per_key = attention_flops(adapter, 1)
        self.unembed = unembed_flops(adapter)

    def row(self, p: PassRecord) -> int:
        """One fed row of pass ``p`` through its layers (attention over its KV length)."""
        return self.prefix[p.layers] + self.per_key * p.layers * p.kv_len

    def total(self, p: PassRecord) -> int:
        return self.row(p) * p.rows + self.unembed * p.logits_rows

    def decode(self, p: PassRecord, prompt_len: int) -> int:
        """The pass's FLOPs outside the prefill. A pass over an empty cache is a prefill for its
        first ``prompt_len`` rows and one logits row (the first token); rows after the prompt are
        drafts it verifies in the same pass (assisted generation's first step), and are decode."""
        if not p.prefill:
            return self.total(p)
        extra = max(0, p.rows - prompt_len)
        return self.row(p) * extra + self.unembed * min(extra, p.logits_rows)


@dataclass
class CallLog:
    """The last call's passes, per model (``target``; ``draft`` for assisted), the prompt length and
    how many tokens transformers generated (before the cut to what `Run.emit` would keep) and
    the drafts accepted at each step of the assisted loop (each step emits those and one more)."""

    prompt_len: int = 0
    generated: int = 0
    accepted_per_step: list[int] = field(default_factory=list)
    passes: dict[str, list[PassRecord]] = field(default_factory=dict)
    flops_total: int = 0  # every pass, the prefills included: what FlopCounterMode counts
    flops_prefill: int = 0


# --------------------------------------------------------------------------------- the baselines


class HFBaseline:
    """transformers' ``generate`` behind the decoding-strategy interface (greedy, batch 1).

    ``generate(engine, prompt, settings)`` ignores the engine's model (it runs the HF model) but
    takes its context length for the budget. Statistics: ``forward_passes`` = passes of the target
    model, the prefill included (for ``hf_early_exit`` its shallow draft passes too, as the engine's
    `layerskip` counts them; `assisted`'s draft model is another model and not counted);
    ``exit_histogram`` = {last layer: full-depth passes but the prefill} (and, for
    ``hf_early_exit``, {exit layer: its draft passes but the draft's prefill}); ``drafted``,
    ``accepted``, ``verifications`` as counted on the candidate generator (`_CandidateCounts`);
    ``flops`` = analytic FLOPs of every pass but the prefill's prompt rows, the draft model's
    passes included (`_Shape`); ``trace`` (and ``draft_trace``, the draft model's) = the passes after
    the first token, each as one segment of its depth (`decode_trace`), so the cost model prices them
    like the engine's passes.
    """

    name = "hf_generate"
    kv = "fill"  # shares `full`'s engine in the protocol; the engine itself is never run
    heads = None
    draft: PreTrainedModel | None = None  # the draft model, for `assisted`
    _draft_shape: _Shape | None = None

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.adapter = get_adapter(model)
        self._shape = _Shape(self.adapter)
        self.last = CallLog()

    @property
    def exit_layers(self) -> list[int]:
        return []

    def settings(self) -> dict[str, Any]:
        """What is recorded beside the run: the settings that make this baseline what it is."""
        return {"baseline": self.name, "transformers": transformers.__version__}

    def _config(self) -> dict[str, Any]:
        """The method's ``GenerationConfig`` fields (subclasses)."""
        return {}

    def _never_eos(self) -> int:
        """An id no argmax can produce (transformers warns on negative ones): EOS that never fires."""
        return self.adapter.vocab_size

    def generate(
        self, engine: ExitEngine | None, prompt: torch.Tensor, settings: DecodeSettings
    ) -> DecodeResult:
        prompt = torch.as_tensor(prompt).reshape(-1)
        max_len = engine.max_len if engine is not None else self.adapter.max_positions
        _check_inputs(prompt, settings, max_len)
        budget = min(settings.max_new_tokens, max_len - prompt.numel())
        model, device = self.model, self.adapter.device
        ids = prompt.reshape(1, -1).to(device)
        eos = settings.eos_token_id
        config = GenerationConfig(
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=eos if eos is not None else self._never_eos(),
            pad_token_id=eos if eos is not None else (model.config.pad_token_id or 0),
            use_cache=True,
            **self._config(),
        )
        # A prompt may contain the pad id: the mask is explicit, so it is never masked out.
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "generation_config": config}
        if self.draft is not None:
            kwargs["assistant_model"] = self.draft
        if settings.stop is not None and settings.stop.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopCriteria(settings.stop, ids.shape[1])])
        counts = _CandidateCounts()
        order = itertools.count()  # one sequence over both models: which passes the first token waited for
        logs = {"target": _PassLog(model, order)}
        if self.draft is not None:
            logs["draft"] = _PassLog(self.draft, order)
        with _Hooked(model, self.draft, logs, counts, self._drafting()):
            streamer = _FirstToken(device)
            synchronize(device)
            start = time.perf_counter()
            out = model.generate(ids, streamer=streamer, **kwargs)
            synchronize(device)
            total = time.perf_counter() - start
        generated = out[0, ids.shape[1] :].tolist()
        tokens = emitted(generated, budget, eos, settings.stop)
        stats = DecodeStats(tokens=len(tokens), total_s=total, ttft_s=(streamer.first or start) - start)
        self._count(stats, counts, logs, prompt.numel())
        self.last.generated = len(generated)
        return DecodeResult(tokens, stats)

    def _drafting(self) -> dict[str, Any]:
        """Drafting settings transformers reads from the assistant model's generation config."""
        return {}

    def _count(self, stats: DecodeStats, counts: _CandidateCounts, logs: dict, prompt_len: int) -> None:
        """Fill the statistics from what the hooks recorded; runs after the clock stopped."""
        last = self.adapter.num_layers
        target = [p for p in logs["target"].passes if p.layers == last]
        drafts = [p for p in logs["target"].passes if p.layers < last]  # transformers' LayerSkip
        stats.forward_passes = len(logs["target"].passes)
        stats.drafted, stats.accepted = counts.drafted, counts.accepted
        stats.verifications = counts.verifications
        decode_passes = sum(not p.prefill for p in target)
        if decode_passes:
            stats.exit_histogram[last - 1] += decode_passes
        for p in drafts:
            if not p.prefill:
                stats.exit_histogram[p.layers - 1] += 1
        shapes = {"target": self._shape, "draft": self._draft_shape}
        passes = {k: list(v.passes) for k, v in logs.items()}
        self.last = CallLog(prompt_len, passes=passes, accepted_per_step=counts.accepted_per_step)
        first = first_token_pass(logs["target"].passes, last)
        stats.trace = decode_trace(logs["target"].passes, first, last)
        if "draft" in logs:
            depth = self.draft.config.num_hidden_layers
            stats.draft_trace = decode_trace(logs["draft"].passes, first, depth)
        for kind, log in logs.items():
            shape = shapes[kind]
            for p in log.passes:
                total, decode = shape.total(p), shape.decode(p, prompt_len)
                stats.flops += decode
                self.last.flops_total += total
                self.last.flops_prefill += total - decode


class HFGenerate(HFBaseline):
    """transformers' greedy ``generate`` with its KV cache: the speed reference."""

    name = "hf_generate"


class _AssistedBase(HFBaseline):
    """Shared by the baselines that draft with a model: its drafting settings, set on the
    ``generation_config`` transformers reads them from (the assistant model's, not the call's:
    `AssistedCandidateGenerator` copies ``assistant_model.generation_config``) for the call, and
    on the call's config as well."""

    def __init__(
        self, model: PreTrainedModel, num_assistant_tokens: int, confidence_threshold: float
    ) -> None:
        super().__init__(model)
        if num_assistant_tokens < 1:
            raise ValueError(f"num_assistant_tokens must be >= 1, got {num_assistant_tokens}")
        if not 0.0 <= confidence_threshold < 1.0:
            raise ValueError(f"assistant_confidence_threshold must be in [0, 1), got {confidence_threshold}")
        self.num_assistant_tokens = num_assistant_tokens
        self.confidence_threshold = confidence_threshold

    def _drafting(self) -> dict[str, Any]:
        return {
            "num_assistant_tokens": self.num_assistant_tokens,
            "num_assistant_tokens_schedule": ASSISTANT_SCHEDULE,
            "assistant_confidence_threshold": self.confidence_threshold,
        }

    def settings(self) -> dict[str, Any]:
        # With scikit-learn importable (a dependency here), transformers moves the threshold within
        # a call (a ROC fit over the call's drafts); each call starts from the value set.
        return {
            **super().settings(),
            **self._drafting(),
            "confidence_threshold_adapts": is_sklearn_available(),
        }


class Assisted(_AssistedBase):
    """``generate(assistant_model=draft)``: draft-model speculative decoding, greedy (lossless)."""

    name = "assisted"

    def __init__(
        self,
        model: PreTrainedModel,
        draft: PreTrainedModel,
        num_assistant_tokens: int = NUM_ASSISTANT_TOKENS,
        confidence_threshold: float = CONFIDENCE_THRESHOLD,
        draft_fingerprint: str | None = None,
    ) -> None:
        super().__init__(model, num_assistant_tokens, confidence_threshold)
        if draft is model:
            raise ValueError("assisted: the draft model is the target itself (use hf_early_exit for that)")
        self.draft = draft
        self._draft_shape = _Shape(get_adapter(draft))
        self.draft_fingerprint = draft_fingerprint

    def _config(self) -> dict[str, Any]:
        return self._drafting()

    def settings(self) -> dict[str, Any]:
        out = {
            **super().settings(),
            "draft_model_id": str(
                getattr(self.draft.config, "_name_or_path", "") or self.draft.config.model_type
            ),
            "draft_layers": self.draft.config.num_hidden_layers,
            "draft_parameters": sum(p.numel() for p in self.draft.parameters()),
        }
        if self.draft_fingerprint is not None:
            out["draft_fingerprint"] = self.draft_fingerprint
        return out


class PromptLookup(HFBaseline):
    """``generate(prompt_lookup_num_tokens=N)``: drafts copied from where the last n-gram occurred
    before (up to ``max_matching_ngram_size`` tokens); no draft model, so drafting costs no FLOPs."""

    name = "prompt_lookup"

    def __init__(
        self, model: PreTrainedModel, tokens: int = LOOKUP_TOKENS, ngram: int = LOOKUP_NGRAM
    ) -> None:
        super().__init__(model)
        if tokens < 1 or ngram < 1:
            raise ValueError(f"prompt lookup needs tokens >= 1 and ngram >= 1, got {tokens} and {ngram}")
        self.tokens, self.ngram = tokens, ngram

    def _config(self) -> dict[str, Any]:
        return {"prompt_lookup_num_tokens": self.tokens, "max_matching_ngram_size": self.ngram}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "prompt_lookup_num_tokens": self.tokens,
            "max_matching_ngram_size": self.ngram,
        }


class HFEarlyExit(_AssistedBase):
    """``generate(assistant_early_exit=E)``: transformers' LayerSkip, drafting with the model's first
    E layers and its own final norm + LM head, in a cache of its own.

    ``exit_layer`` counts like the engine's exit layers (0-based index of the last layer run, the
    layer `mode=layerskip` drafts from), so E = exit_layer + 1 layers run per draft.
    """

    name = "hf_early_exit"

    def __init__(
        self,
        model: PreTrainedModel,
        exit_layer: int,
        num_assistant_tokens: int = NUM_ASSISTANT_TOKENS,
        confidence_threshold: float = CONFIDENCE_THRESHOLD,
    ) -> None:
        super().__init__(model, num_assistant_tokens, confidence_threshold)
        layers = self.adapter.num_layers
        if not 0 <= exit_layer < layers - 1:
            raise ValueError(
                f"hf_early_exit: exit layer must be in 0..{layers - 2} (the model has {layers} layers), "
                f"got {exit_layer}"
            )
        self.exit_layer = exit_layer

    def _config(self) -> dict[str, Any]:
        return {"assistant_early_exit": self.exit_layer + 1, **self._drafting()}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "exit_layer": self.exit_layer,
            "assistant_early_exit": self.exit_layer + 1,
        }


class _Hooked:
    """For one ``generate`` call: pass logs on the models, acceptance counts on the candidate
    generator, fresh generation configs on the models; all restored after.

    Fresh configs: transformers fills every field the call's config leaves unset from
    ``model.generation_config`` (a checkpoint's repetition penalty, n-gram ban, minimum length...),
    so for the call the models carry a default config, plus the drafting settings where
    transformers reads them: the assistant model's config (the draft's, or the model's own for
    its LayerSkip), not the call's. Plain greedy, whatever the checkpoint asks for.

    transformers' LayerSkip lowers ``config.num_hidden_layers`` and restores it only when drafting
    succeeds: after the IndexError on GPT-NeoX the model would keep running with fewer layers
    (observed with transformers 5.23), so the depth is restored here whatever happens.
    """

    def __init__(
        self, model, draft, logs: dict[str, _PassLog], counts: _CandidateCounts, drafting: dict[str, Any]
    ) -> None:
        self.model, self.draft, self.logs, self.counts = model, draft, logs, counts
        self.configs = {model: GenerationConfig(**(drafting if draft is None else {}))}
        if draft is not None:
            self.configs[draft] = GenerationConfig(**drafting)
        self.handles: list = []

    def __enter__(self) -> _Hooked:
        model = self.model
        self.layers = model.config.num_hidden_layers
        self.base_layers = getattr(model, model.base_model_prefix).config.num_hidden_layers
        self.own = "_get_candidate_generator" in vars(model)
        self.previous = vars(model).get("_get_candidate_generator")
        model._get_candidate_generator = self.counts.wrap(model._get_candidate_generator)
        self.handles.append(model.register_forward_hook(self.logs["target"], with_kwargs=True))
        if self.draft is not None:
            self.handles.append(self.draft.register_forward_hook(self.logs["draft"], with_kwargs=True))
        self.saved = {m: m.generation_config for m in self.configs}
        for m, config in self.configs.items():
            m.generation_config = config
        return self

    def __exit__(self, *exc) -> None:
        model = self.model
        for handle in self.handles:
            handle.remove()
        if self.own:
            model._get_candidate_generator = self.previous
        else:
            del model._get_candidate_generator
        model.config.num_hidden_layers = self.layers
        getattr(model, model.base_model_prefix).config.num_hidden_layers = self.base_layers
        for m, config in self.saved.items():
            m.generation_config = config


def _check_inputs(prompt: torch.Tensor, settings: DecodeSettings, max_len: int) -> None:
    """The engine's modes' refusals (decoding/base.py `check_inputs`), with the same messages."""
    if prompt.numel() == 0:
        raise ValueError("empty prompt: give at least one token")
    if prompt.numel() >= max_len:
        raise ValueError(
            f"prompt of {prompt.numel()} tokens leaves no room in the context of {max_len} tokens"
        )
    if settings.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")


def first_token_pass(target: Sequence[PassRecord], depth: int) -> int | None:
    """The order (``seq``) of the pass after which the first token is handed out: the target's first
    full-depth (``depth``) pass, which for `assisted` and `hf_early_exit` follows the first round's
    drafts. The measured time per token starts there, so the priced work does too."""
    return next((p.seq for p in target if p.layers == depth), None)


def decode_trace(passes: Sequence[PassRecord], after: int | None, depth: int) -> TraceCounts:
    """``passes`` after pass ``after`` (`first_token_pass`) as the engine's trace: one segment of the
    pass's layers on its rows, exited when short of the model's ``depth`` (transformers' LayerSkip
    drafting), its logits rows unembedded. Cache reuse between passes is not recorded: priced as
    after a full-depth pass."""
    trace = TraceCounts()
    for p in passes:
        if after is None or p.seq <= after:
            continue
        trace.passes += 1
        trace.segments[(p.layers, p.rows, 0, p.kv_len, p.layers < depth, 0, 0, 0)] += 1
        if p.logits_rows:
            trace.unembed[p.logits_rows] += 1
    return trace


# ------------------------------------------------------------------------------------ building


def make_baseline(
    name: str,
    model: PreTrainedModel,
    *,
    draft: PreTrainedModel | None = None,
    exit_layer: int | None = None,
    num_assistant_tokens: int = NUM_ASSISTANT_TOKENS,
    confidence_threshold: float = CONFIDENCE_THRESHOLD,
    lookup_tokens: int = LOOKUP_TOKENS,
    lookup_ngram: int = LOOKUP_NGRAM,
    draft_fingerprint: str | None = None,
) -> HFBaseline:
    """The baseline ``name`` (one of BASELINES) on ``model``; ``settings()`` says what it ran with.

    ``assisted`` needs ``draft`` (same tokenizer; `earlyexit.model.draft`); ``hf_early_exit`` needs
    ``exit_layer`` (0-based, as the engine counts: E = exit_layer + 1 layers draft) and a model
    transformers can run it on (check `hf_early_exit_unsupported` first).
    """
    check_baselines([name])
    if name == "hf_generate":
        return HFGenerate(model)
    if name == "assisted":
        if draft is None:
            raise ValueError(
                "assisted needs a draft model (draft=...): a smaller model with the same tokenizer"
            )
        return Assisted(model, draft, num_assistant_tokens, confidence_threshold, draft_fingerprint)
    if name == "prompt_lookup":
        return PromptLookup(model, lookup_tokens, lookup_ngram)
    if exit_layer is None:
        raise ValueError("hf_early_exit needs exit_layer=... (0-based: the last layer its drafts run)")
    return HFEarlyExit(model, exit_layer, num_assistant_tokens, confidence_threshold)


def hf_early_exit_unsupported(model: PreTrainedModel) -> str | None:
    """Why transformers' ``assistant_early_exit`` cannot run on ``model``, or None when it can.

    Decided before any timing by a probe: 2 new tokens from a 2-token prompt, drafting from the
    first layer. Any error is the reason (with the architecture and transformers' version); the
    model's depth is restored afterwards (`_Hooked`).
    """
    model_type = model.config.model_type
    where = f"{model_type} ({type(model).__name__}) with transformers {transformers.__version__}"
    if model.config.num_hidden_layers < 2:
        return f"{where}: a model of {model.config.num_hidden_layers} layer has no layer to exit early from"
    probe = HFEarlyExit(model, exit_layer=0, num_assistant_tokens=2)
    prompt = torch.zeros(2, dtype=torch.long)
    try:
        probe.generate(None, prompt, DecodeSettings(max_new_tokens=2))
    except Exception as err:  # whatever transformers raises is the reason
        why = f"{type(err).__name__}: {err}"
        if model_type == "gpt_neox":
            why += (
                " (assistant_early_exit lowers config.num_hidden_layers while drafting, which GPT-NeoX's "
                "layer loop ignores, so the draft's cache has too few layers)"
            )
        return f"generate(assistant_early_exit=E) cannot run on {where}: {why}"
    return None
