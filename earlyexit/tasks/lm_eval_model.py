"""lm-eval's model interface with early exits in the loop (``EarlyExitLM``).

Teacher-forced scoring is exact with respect to the exit engine: the engine fills the deeper
K/V of exited tokens with their true deeper values, so every position's hidden states equal a
plain full forward's, and one forward plus the heads gives each position's early-exit logits.
Exits are applied at *every* scored position (the engine's prefill would run the first
generated token at full depth; scoring it the same way as later tokens measures what exits do
to each prediction).

That holds for ``kv="fill"`` only. Under ``propagate`` and ``skip`` a position's hidden states
depend on where earlier tokens exited, so each request is scored token by token through the
engine (``teacher_forced_exits``): one pass per scored token instead of one batched forward.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from earlyexit.decoding import (
    DecodeSettings,
    EarlyExitDecoding,
    FullDecoding,
    Stop,
    StopCheck,
    Strategy,
    engine_for,
)
from earlyexit.decoding.base import kv_of
from earlyexit.decoding.teacher_forced import teacher_forced_exits
from earlyexit.exits.confidence import should_exit
from earlyexit.exits.heads import HeadSet
from earlyexit.exits.policy import ThresholdPolicy
from earlyexit.model.adapter import ModelAdapter
from earlyexit.model.engine import ExitEngine, check_kv_strategy

log = logging.getLogger(__name__)

__all__ = ["EarlyExitLM", "early_exit_logits"]


@torch.no_grad()
def early_exit_logits(
    adapter: ModelAdapter,
    heads: HeadSet | None,
    policy: ThresholdPolicy | None,
    ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced early-exit logits ``[B, T, V]`` and the exit layer ``[B, T]`` of each position.

    Each position takes the logits of the first head (in depth order) whose score passes its
    threshold, else the final logits (exit layer ``num_layers - 1``). ``policy=None`` is the
    full model. A head is evaluated only on positions no shallower head has claimed, as the
    engine would; a NaN score never exits.
    """
    ids = torch.as_tensor(ids).to(adapter.device)
    if ids.dim() != 2:
        raise ValueError(f"ids must be [batch, seq], got shape {tuple(ids.shape)}")
    full_depth = adapter.num_layers - 1
    if policy is None or not policy.exit_layers:
        logits = adapter.model(ids).logits
        return logits, torch.full(ids.shape, full_depth, dtype=torch.long, device=logits.device)
    heads = heads if heads is not None else policy.heads
    out = adapter.model(ids, output_hidden_states=True)
    logits = out.logits  # our own no-grad tensor: exits overwrite it in place
    exit_layer = torch.full(ids.shape, full_depth, dtype=torch.long, device=logits.device)
    open_ = torch.ones(ids.shape, dtype=torch.bool, device=logits.device)
    for layer in policy.exit_layers:
        if not open_.any():
            break
        # transformers puts the embeddings first: hidden_states[k + 1] is layer k's output.
        head_logits = heads(layer, out.hidden_states[layer + 1][open_])
        fire = should_exit(policy.metric(head_logits), policy.thresholds[layer])
        rows = open_.nonzero(as_tuple=True)
        chosen = tuple(r[fire] for r in rows)
        logits[chosen] = head_logits[fire].to(logits.dtype)
        exit_layer[chosen] = layer
        open_[chosen] = False
    return logits, exit_layer


class EarlyExitLM(TemplateLM):
    """An lm-eval model whose every prediction goes through the exit policy.

    Subclasses lm-eval's ``TemplateLM`` (an ``LM``) to inherit its exact context/continuation
    encoding (trailing spaces move to the continuation; an empty context becomes the EOS
    token), so scores are comparable with lm-eval's ``HFLM``. ``exit_histogram`` counts, per
    exit layer (``num_layers - 1`` = full depth), the positions scored or generated.

    ``kv`` is how exited tokens' K/V are kept (``earlyexit.model.engine``), in scoring and in
    generation alike. Scoring is one batched forward under ``fill`` and token by token through
    the engine otherwise; ``token_by_token=True`` forces the latter under ``fill`` too (it gives
    the same scores, slower: a check of the engine, or a timing).
    """

    backend = "causal"

    def __init__(
        self,
        adapter: ModelAdapter,
        tokenizer: PreTrainedTokenizerBase,
        policy: ThresholdPolicy | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        disable_tqdm: bool = False,
        kv: str = "fill",
        token_by_token: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_kv_strategy(kv)
        self.kv = kv
        self.token_by_token = kv != "fill" if token_by_token is None else bool(token_by_token)
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.policy = policy
        self.batch_size = int(batch_size)
        self.max_length = min(int(max_length or adapter.max_positions), adapter.max_positions)
        self.max_gen_toks = int(max_gen_toks)
        self.disable_tqdm = disable_tqdm
        self.exit_histogram: Counter[int] = Counter()
        self._engines: dict[tuple[tuple[int, ...], str], ExitEngine] = {}
        self._device = adapter.device

    # -- identity and tokenisation (TemplateLM's hooks)

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token; lm-eval needs one as the empty-context prefix")
        return int(eos)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.disable_tqdm)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model": self.adapter.model_id,
            "exit_layers": self.policy.exit_layers if self.policy else [],
            "metric": self.policy.metric.name if self.policy else None,
            "kv": self.kv,
        }

    # -- exit accounting

    @property
    def positions(self) -> int:
        return sum(self.exit_histogram.values())

    def exit_rates(self) -> dict[int, float]:
        """Share of scored/generated positions per exit layer (full depth = ``num_layers - 1``)."""
        total = self.positions
        return {k: n / total for k, n in sorted(self.exit_histogram.items())} if total else {}

    def reset_exit_histogram(self) -> None:
        self.exit_histogram.clear()

    # -- lm-eval request types

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """Sum log-probs of continuation tokens; contexts are cut from the left to fit ``max_length``."""
        for _, ctx, cont in requests:
            if not ctx or not cont:
                raise ValueError("every request needs at least one context and one continuation token")
            if len(cont) > self.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={self.max_length}")
        # The scored model's input: context and continuation but the last token, cut to fit.
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in requests]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm or self.disable_tqdm)
        if self._scores_token_by_token():
            engine = self._get_engine(self._strategy())
            for i, x in enumerate(inputs):
                scored = teacher_forced_exits(engine, self.policy, x, len(x) - len(requests[i][2]))
                results[i] = self._record(requests[i], scored.logits, scored.exit_layers)
                bar.update(1)
        else:
            # Longest first: padding is minimal within a batch and the slowest batch comes first.
            order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(inputs[i]) for i in chunk)
                # Right padding: a causal model's real positions never see the pad tokens.
                batch = torch.tensor(
                    [inputs[i] + [self.eot_token_id] * (width - len(inputs[i])) for i in chunk]
                )
                logits, exits = early_exit_logits(
                    self.adapter, self.policy.heads if self.policy else None, self.policy, batch
                )
                for row, i in enumerate(chunk):
                    span = slice(len(inputs[i]) - len(requests[i][2]), len(inputs[i]))
                    results[i] = self._record(requests[i], logits[row, span], exits[row, span].tolist())
                    bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    def _scores_token_by_token(self) -> bool:
        """Only a policy that can exit makes positions depend on earlier exits."""
        return self.token_by_token and self.policy is not None and bool(self.policy.exit_layers)

    def _record(self, request: tuple, logits: torch.Tensor, exits: list[int]) -> tuple[float, bool]:
        """Score one request from its continuation's logits [len(cont), V]; count its exits."""
        request_str, _, cont = request
        # Softmax over the continuation only: [B, T, V] in float32 would be GBs for Pythia.
        lp = F.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(cont, device=lp.device)
        answer = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        self.exit_histogram.update(exits)
        if request_str is not None:
            self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answer

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihood in disjoint rolling windows, as lm-eval's ``HFLM`` does."""
        windows: list[tuple[None, list[int], list[int]]] = []
        owner: list[int] = []
        for i, req in enumerate(requests):
            (string,) = req.args
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores, strict=True):
            totals[i] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation with the exit policy, ending at the first ``until`` string.

        The stop strings are checked inside the decoding as each token is emitted (the same
        `StopCheck` the timed workloads use), so no token past the stop is generated; the text is
        the output before its first stop, as lm-eval cuts it.
        """
        strategy = self._strategy()
        engine = self._get_engine(strategy)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        outputs: list[str] = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm or self.disable_tqdm):
            context, gen_kwargs = req.args
            until, max_gen = self._generation_args(gen_kwargs, eos_text)
            max_ctx = self.max_length - max_gen
            if max_ctx < 1:
                raise ValueError(f"max_gen_toks={max_gen} leaves no room in max_length={self.max_length}")
            ids = self.tok_encode(context)[-max_ctx:] or [self.prefix_token_id]
            stop = StopCheck(Stop(tuple(until)), self.tok_decode)
            result = strategy.generate(
                engine,
                torch.tensor(ids),
                DecodeSettings(max_new_tokens=max_gen, eos_token_id=self.eot_token_id, stop=stop),
            )
            self._count_generation(result)
            text = stop.text([t for t in result.ids if t != self.eot_token_id])
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    def _generation_args(self, gen_kwargs: dict, eos_text: str) -> tuple[list[str], int]:
        kwargs = dict(gen_kwargs or {})
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
            log.warning("EarlyExitLM decodes greedily; ignoring do_sample/temperature %s", kwargs)
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if eos_text and eos_text not in until:
            until.append(eos_text)
        max_gen = kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks))
        return until, int(max_gen)

    def _count_generation(self, result) -> None:
        # The prefill emits the first token at full depth; each later pass is one token.
        if result.stats.tokens:
            self.exit_histogram[self.adapter.num_layers - 1] += 1
        self.exit_histogram.update(result.stats.exit_histogram)

    def _strategy(self) -> Strategy:
        """How this model decodes; its engine also scores token by token, so both share one."""
        return EarlyExitDecoding(self.policy, self.kv) if self.policy else FullDecoding()

    def _get_engine(self, strategy: Strategy) -> ExitEngine:
        """One engine per (exit layers, kv), reused across requests."""
        key = (tuple(strategy.exit_layers), kv_of(strategy))
        if key not in self._engines:
            self._engines[key] = engine_for(strategy, self.adapter, max_len=self.max_length)
        return self._engines[key]
