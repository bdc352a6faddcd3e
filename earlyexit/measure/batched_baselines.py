"""transformers' greedy ``generate`` on a left-padded batch: the outside baseline for batched decoding.

`hf_generate_batch` runs B prompts through one ``generate`` call, the way a user of transformers
decodes a batch, and returns for every sequence the very ids batch-1 `full` returns for its prompt
(the budget, EOS included in the output, stop strings checked token by token; `emitted` cuts each
row), with the batch's wall time, time to its first token, and what every pass computed.

What transformers does with a batch (read in transformers 5.23.0's source, and tested):

- Padding: decoder-only models are left-padded, so every row's next token is read from the last
  column. The attention mask comes from the prompts' lengths (never from comparing ids with the
  pad id: a prompt may contain it), and pad keys are masked out of every row's attention.
- Positions: ``generate`` derives ``position_ids`` from the mask (``cumsum - 1``, pads at 0;
  ``GenerationMixin._prepare_position_ids_for_generation``) and extends them by one per step
  (``_update_model_kwargs_for_generation``), so each row's real tokens sit at 0, 1, 2... as in
  batch 1; none need passing (checked in tests/measure/test_batched_baselines.py).
- Finished rows: a row that emitted EOS (or that a stopping criterion marked done, here a stop
  string) is not removed. It keeps being fed, one pad token a step, until every row is done or the
  longest budget is spent: each decode pass computes all B rows over the whole padded KV width.
  That is the baseline's real cost, and what a user of ``generate`` pays, so the padded prompt
  rows and the finished rows' passes are counted as work (FLOPs, trace), not discounted.
- Float64 with eager attention is refused where a prompt is padded: eager attention takes its
  softmax in float32, where float64's mask value (its most negative finite number) becomes -inf; a
  pad row, which may attend to nothing, turns NaN, and the NaN reaches every row through the next
  layer's values (0 x NaN). SDPA in float64 and eager in float32 pad correctly (tested).

Budgets: batch-1 `full` may generate min(max_new_tokens, max_len - len(prompt)) tokens per prompt.
``generate`` runs for the longest of these, and every row's columns share the padded width, so a
batch whose longest (padded) prompt plus the longest budget exceeds the context is refused rather
than cut short (which also means that every row's budget is the same whenever a batch runs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from earlyexit.decoding import DecodeSettings
from earlyexit.decoding.batched import per_prompt_settings
from earlyexit.decoding.stops import StopCheck
from earlyexit.measure.baselines import PassRecord, _FirstToken, _Shape, emitted
from earlyexit.model.adapter import get_adapter
from earlyexit.model.device import synchronize
from earlyexit.model.trace import TraceCounts

__all__ = ["BatchPassRecord", "BatchedHFResult", "hf_generate_batch", "pad_token_for", "per_prompt"]


@dataclass(frozen=True)
class BatchPassRecord:
    """One forward pass of a batched ``generate``: what its FLOPs and cost are computed from."""

    batch: int  # rows of the batch (finished sequences included: they are still computed)
    rows: int  # tokens fed per sequence (the padded prompt in the prefill, then 1)
    kv_len: int  # keys attended over per sequence: the padded width, cached + fed
    logits_rows: int  # LM-head rows per sequence
    layers: int

    @property
    def prefill(self) -> bool:
        """A pass over an empty cache: it starts with the (padded) prompts."""
        return self.kv_len == self.rows

    @property
    def flat(self) -> PassRecord:
        """The pass as one sequence of ``batch x rows`` rows at this KV length: the same FLOPs
        (each sequence's rows attend over ``kv_len`` keys), and the rows the cost model prices."""
        return PassRecord(self.layers, self.batch * self.rows, self.kv_len, self.batch * self.logits_rows)


@dataclass
class BatchedHFResult:
    """One batched ``generate`` call.

    ``ids`` per sequence equal batch-1 `full`'s for its prompt. ``total_s`` and ``ttft_s`` are the
    batch's (device synchronised before and after; the first token is the first step's, handed out
    for every row at once). ``generated`` = new tokens per row before the cut (the steps ran: a
    finished row's pads included). ``flops`` = analytic FLOPs of the decode passes (every pass
    after the prefill, all B rows of each), ``flops_prefill`` the prefill's (the padded prompts and
    the first token's logits); ``trace`` = the decode passes as the engine's trace, rows = the
    batch's rows, so the cost model prices them.
    """

    ids: list[list[int]]
    total_s: float
    ttft_s: float
    generated: int
    budgets: list[int]
    padded_len: int
    passes: list[BatchPassRecord] = field(default_factory=list)
    flops: int = 0
    flops_prefill: int = 0
    trace: TraceCounts = field(default_factory=TraceCounts)

    @property
    def batch(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        """Tokens the sequences kept, all rows together."""
        return sum(map(len, self.ids))

    @property
    def forward_passes(self) -> int:
        return len(self.passes)

    @property
    def flops_total(self) -> int:
        """Every pass, the prefill included: what FlopCounterMode counts."""
        return self.flops + self.flops_prefill


def per_prompt(settings: DecodeSettings | Sequence[DecodeSettings], prompts: int) -> list[DecodeSettings]:
    """One settings for every prompt, or one per prompt (a workload's prompts each have their own
    budget and stops); refused when the count is wrong or the EOS differs (it is the batch's)."""
    out = per_prompt_settings(settings, prompts)
    eos = {s.eos_token_id for s in out}
    if len(eos) > 1:
        raise ValueError(f"the prompts of one batch must share their EOS id, got {sorted(eos, key=str)}")
    return out


def pad_token_for(model: PreTrainedModel, settings: DecodeSettings) -> int:
    """The id prompts are left-padded with (and finished rows are fed): the model's pad id, else the
    run's EOS, else 0. Which id it is changes no output: padded columns are masked out."""
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return settings.eos_token_id if settings.eos_token_id is not None else 0


def hf_generate_batch(
    model: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    settings: DecodeSettings | Sequence[DecodeSettings],
    max_len: int | None = None,
) -> BatchedHFResult:
    """transformers' greedy ``generate`` (KV cache) on the prompts left-padded into one batch.

    ``settings``: one for all prompts or one per prompt (its own budget and stops; one EOS).
    ``max_len`` is the context the engine decodes in (default: the model's position limit); each
    sequence's budget is batch-1 `full`'s, min(max_new_tokens, max_len - len(prompt)). Refuses,
    naming the sizes, no prompts, an empty prompt or one that leaves no room, and a batch whose
    padded width plus the longest budget exceeds ``max_len`` (module docstring). The generation
    config is fresh (greedy, no penalty or EOS from the checkpoint's), as `HFBaseline`'s.
    """
    adapter = get_adapter(model)
    max_len = adapter.max_positions if max_len is None else max_len
    flat = [torch.as_tensor(p).reshape(-1) for p in prompts]
    if not flat:
        raise ValueError("no prompts: give at least one (a batch of 0 sequences)")
    rows = per_prompt(settings, len(flat))
    budgets = _check_batch(flat, rows, max_len)
    lengths = [p.numel() for p in flat]
    width = max(lengths)
    if len(set(lengths)) > 1:
        _check_padding_is_safe(model)
    device = adapter.device
    pad = pad_token_for(model, rows[0])
    ids = torch.full((len(flat), width), pad, dtype=torch.long)
    mask = torch.zeros((len(flat), width), dtype=torch.long)
    for i, p in enumerate(flat):
        ids[i, width - p.numel() :] = p
        mask[i, width - p.numel() :] = 1  # from the length: a prompt's own pad-id tokens stay attended
    ids, mask = ids.to(device), mask.to(device)
    eos = rows[0].eos_token_id
    config = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=False,
        # EOS that never fires (an id no argmax can produce) when the run has none, as HFBaseline's:
        # the checkpoint's EOS must not end a row early.
        eos_token_id=eos if eos is not None else adapter.vocab_size,
        pad_token_id=pad,
        use_cache=True,
    )
    kwargs: dict[str, Any] = {"attention_mask": mask, "generation_config": config}
    stops = [r.stop if r.stop is not None and r.stop.stop else None for r in rows]
    if any(stops):
        kwargs["stopping_criteria"] = StoppingCriteriaList([_RowStops(stops, width, eos)])
    log = _BatchPassLog(model)
    with _Fresh(model, log):
        streamer = _FirstToken(device)
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(ids, streamer=streamer, **kwargs)
        synchronize(device)
        total = time.perf_counter() - start
    new = out[:, width:].tolist()
    kept = [emitted(row, budget, eos, r.stop) for row, budget, r in zip(new, budgets, rows, strict=True)]
    result = BatchedHFResult(
        ids=kept,
        total_s=total,
        ttft_s=(streamer.first or start) - start,
        generated=out.shape[1] - width,
        budgets=budgets,
        padded_len=width,
        passes=list(log.passes),
    )
    _price(result, _Shape(adapter), adapter.num_layers)
    return result


def _price(result: BatchedHFResult, shape: _Shape, depth: int) -> None:
    """FLOPs and the decode trace from the pass records; runs after the clock stopped.

    The trace keys a pass as `decode_trace` (measure/baselines.py) keys a batch-1 baseline's: one
    full-depth segment of ``batch x rows`` new rows at the pass's KV length, nothing exited, its
    logits rows unembedded."""
    trace = TraceCounts()
    for p in result.passes:
        flops = shape.total(p.flat)
        if p.prefill:
            result.flops_prefill += flops
            continue
        result.flops += flops
        f = p.flat
        trace.passes += 1
        trace.segments[(f.layers, f.rows, 0, f.kv_len, f.layers < depth, 0, 0, 0)] += 1
        if f.logits_rows:
            trace.unembed[f.logits_rows] += 1
    result.trace = trace


def _check_batch(prompts: list[torch.Tensor], settings: list[DecodeSettings], max_len: int) -> list[int]:
    """Each prompt's batch-1 budget, after the engine's refusals (with its messages, naming the
    prompt) and the batch's: its padded width plus the longest budget must fit ``max_len``."""
    for i, s in enumerate(settings):
        if s.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {s.max_new_tokens} (prompt {i})")
    for i, p in enumerate(prompts):
        if p.numel() == 0:
            raise ValueError(
                f"empty prompt (prompt {i} of the batch of {len(prompts)}): give at least one token"
            )
        if p.numel() >= max_len:
            raise ValueError(
                f"prompt {i} of {p.numel()} tokens leaves no room in the context of {max_len} tokens"
            )
    budgets = [min(s.max_new_tokens, max_len - p.numel()) for p, s in zip(prompts, settings, strict=True)]
    width, longest = max(p.numel() for p in prompts), max(budgets)
    if width + longest > max_len:
        shortest = min(p.numel() for p in prompts)
        raise ValueError(
            f"the batch does not fit the context of {max_len} tokens: its prompts are left-padded to "
            f"{width} tokens, and the longest budget is {longest} new tokens (a prompt of {shortest} "
            f"tokens, max_new_tokens={max(s.max_new_tokens for s in settings)}): {width} + {longest} = "
            f"{width + longest}; "
            "batch prompts of closer lengths or lower max_new_tokens"
        )
    return budgets


def _check_padding_is_safe(model: PreTrainedModel) -> None:
    """Refuse float64 under eager attention with padding: its outputs would be NaN (module docstring)."""
    attn = getattr(model.config, "_attn_implementation", None)
    if attn == "eager" and model.dtype == torch.float64:
        raise ValueError(
            "left padding under eager attention in float64 gives NaN in transformers (its softmax runs "
            "in float32, where float64's mask value is -inf, so a pad row attending to nothing is NaN "
            "and spreads to every row): use sdpa attention or float32, or prompts of one length"
        )


class _RowStops(StoppingCriteria):
    """Each row's `StopCheck` (None: none) as a transformers stopping criterion: a row is done once its
    output holds a stop, so ``generate`` feeds it pads from then on and ends when every row is done.

    `StopCheck.hit` assumes every shorter prefix of the output was checked: each row's new tokens
    are checked one by one, from the padded width on. A row is no longer checked once done (a stop,
    or EOS: transformers feeds it pads after that)."""

    def __init__(self, stops: list[StopCheck | None], width: int, eos: int | None) -> None:
        self.stops, self.width, self.eos = stops, width, eos
        self.out: list[list[int]] = []
        self.done: list[bool] = []
        self.seen = 0  # new columns already checked (every row has as many)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        if not self.out:
            self.out = [[] for _ in range(input_ids.shape[0])]
            self.done = [False] * input_ids.shape[0]
        new = input_ids[:, self.width + self.seen :].tolist()
        self.seen += len(new[0])
        for i, row in enumerate(new):
            for tok in row:
                if self.done[i]:
                    break
                self.out[i].append(tok)
                stop = self.stops[i]
                self.done[i] = (stop is not None and stop.hit(self.out[i])) or tok == self.eos
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class _BatchPassLog:
    """Forward hook: every pass's batch, rows per sequence, KV length and logits rows, as ints
    (no timer, no sync; priced after the clock stops)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.layers = model.config.num_hidden_layers
        self.passes: list[BatchPassRecord] = []

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        batch, rows = ids.shape[0], ids.shape[1]
        cache = output.past_key_values
        kv = cache.get_seq_length() if cache is not None else rows
        self.passes.append(BatchPassRecord(batch, rows, kv, output.logits.shape[1], self.layers))


class _Fresh:
    """For one ``generate`` call: the pass log hooked on the model and a default generation config
    on it (transformers fills every field the call's config leaves unset from
    ``model.generation_config``: a checkpoint's penalties, n-gram ban, minimum length); both
    restored after."""

    def __init__(self, model: PreTrainedModel, log: _BatchPassLog) -> None:
        self.model, self.log = model, log

    def __enter__(self) -> _Fresh:
        self.handle = self.model.register_forward_hook(self.log, with_kwargs=True)
        self.saved = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        self.model.generation_config = self.saved
