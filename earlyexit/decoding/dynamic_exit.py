"""`del`: LayerSkip with the exit layer and draft length chosen every round (DEL).

DEL, "Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding" (Entezari Zarch,
Gao, Jiang, Annavaram; arXiv 2504.05598 v2, COLM 2025). Code: https://github.com/hoenza/DEL, a
fork of facebookresearch/LayerSkip, read here through its public copy
https://github.com/359171110/DEL at commit 6369bf7 (the authors' last commit there):
``self_speculation/DEL.py`` (class ``DEL``), ``DEL_speculation_generator.py`` (DEL),
``DELE_speculation_generator.py`` (DEL without its dynamic draft exit) and
``llama_model_utils.py``. Only the paper's abstract and a third-party summary of its TPL formula
could be read, so the rules below follow the code and no equation numbers are cited.

Per prompt, for every candidate exit layer l (here: the layers with a head), DEL keeps
exponentially decayed counts of matched and mismatched *shadow tokens* and the sums of their
confidences (``DEL.update_acceptance_and_confidence_stats``):

- shadow token of layer l at position p: the argmax of l's head on l's hidden state at p, which
  the round's passes computed anyway (``forward_early_DEL``/``forward_remainder_DEL`` cache them;
  here the engine's opt-in ``ExitEngine.tap`` hands them over). It matches when it equals the full
  model's greedy token at p. Its confidence is its probability under l's softmax.
- the positions counted in a round: base (the last emitted token's) .. base + a, with a the
  accepted drafts: every position fed an accepted token, so the one whose draft was the first
  rejected is in, and those fed rejected drafts are out (the code clips after E's first
  mismatch). The prompt's last ``context`` positions (32 in the code) are counted after the prefill.
- after each round: matched <- decay * matched + matched this round; the same for mismatched and
  both confidence sums (``omega`` = 0.95 in the code).

Each round (``DEL.select_optimal_exit_and_gamma``): alpha_l = matched / (matched + mismatched);
tokens-per-layer TPL(l, d) = (1 + alpha_l + ... + alpha_l^d) / (L + d * (l + 1)), the expected
tokens a round yields over the layers it runs (d drafts of l + 1 layers each, then the full model
for the last one; the summary quotes the paper's TPL(l, d) = ((1 - alpha^(d+1)) / (1 - alpha)) /
(d * l + L), l counted from 1). E and d* are the argmax over the candidate layers and d = 0..max_draft (first
maximum: shallowest layer, shortest draft). Drafting (``single_step_speculation``):

- ``draft_stop="confidence"`` (DEL): draft at E until a draft's probability falls below
  tau_E = (mean confidence of E's matched shadow tokens + mean of its mismatched ones) / 2 (that
  draft is kept, then the next pass verifies), at EOS, or after ``max_draft`` drafts (18 in the
  code). tau is undefined, so never stops drafting, while E has no matched or no mismatched weight.
- ``draft_stop="tpl"`` (DELE, the paper's ablation): exactly d* drafts, no confidence stop.

Verification, acceptance and rollback are LayerSkip's (``speculative_generate``), so the output
equals greedy `full` token for token whatever E and d are.

Where this departs from the code, and why:

- Candidates are the heads' layers, each with its own head, not every layer through the shared
  LM head. So shadow tokens cost one head call per candidate layer per round (rows batched), which
  with full-vocabulary ``linear`` heads is several layers' worth of weights each; with ``shared``
  heads all layers go through one call, as the code's single LM-head call. They are counted in
  ``DecodeStats.flops`` (``HeadSet`` counts every row) but not in the pass trace (see
  ``DELRun.shadow_rows``/``shadow_calls``); a draft pass's trace records a check that did not fire
  at each candidate below E, where no head runs until the round's batched shadow call.
- The prefill is its own full pass here (as in every mode), so the prompt's statistics are in
  before the first round, and the first round is chosen by TPL too. The code drafts one token at
  the shallowest candidate in its first round (its prefill); that is kept as the choice when
  nothing is known yet (``context=0``).
- d* = 0 means no drafts that round (one full-depth step), also under ``draft_stop="confidence"``.
  The code drafts anyway there (its confidence loop ignores d*), and when a layer has never
  matched its tau is NaN, which never stops drafting: 18 useless drafts per round.
- Positions after the first rejected draft are always left out; the code keeps them when d* = 0.
- TPL's d runs over 0..max_draft and drafting stops at max_draft (the code: 0..17 and 18).
- ``head_cost`` (0 = the paper) adds a head's cost, in layers, to each draft and to the
  verification's unembedding, for heads that cost far more than the paper's shared LM head.
- The statistics of a generation's last round are not computed: no round would use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from earlyexit.decoding.base import DecodeResult, DecodeSettings
from earlyexit.decoding.speculative import speculative_generate
from earlyexit.exits.confidence import get_metric, read_summary
from earlyexit.exits.heads import HeadSet
from earlyexit.model.engine import ExitCheck, ExitEngine, StepOutput

DRAFT_STOPS = ("confidence", "tpl")
MAX_PROB = get_metric("max-prob")  # a draft's confidence: its token's probability under its head


def tpl_choice(
    alpha: dict[int, float], num_layers: int, max_draft: int, head_cost: float = 0.0
) -> tuple[int, int] | None:
    """(exit layer, drafts) maximising tokens per layer run; None when no layer has an estimate.

    `alpha` maps a 0-based layer (its drafts run layers 0..layer) to its acceptance estimate. Ties
    go to the shallowest layer, then the fewest drafts.
    """
    best, best_value = None, -math.inf
    for layer in sorted(alpha):
        a, expected, power = alpha[layer], 0.0, 1.0
        for d in range(max_draft + 1):
            expected += power  # 1 + a + ... + a^d: the bonus or correction token, then accepted drafts
            power *= a
            value = expected / (num_layers + head_cost + d * (layer + 1 + head_cost))
            if value > best_value:
                best, best_value = (layer, d), value
    return best


@dataclass
class LayerStats:
    """One candidate layer's decayed shadow-token counts and confidence sums (the sums are kept
    under ``draft_stop="confidence"`` only, the one rule that reads them)."""

    matched: float = 0.0
    mismatched: float = 0.0
    confidence_matched: float = 0.0
    confidence_mismatched: float = 0.0

    def update(self, decay: float, matched: int, mismatched: int, conf_hit: float, conf_miss: float) -> None:
        self.matched = decay * self.matched + matched
        self.mismatched = decay * self.mismatched + mismatched
        self.confidence_matched = decay * self.confidence_matched + conf_hit
        self.confidence_mismatched = decay * self.confidence_mismatched + conf_miss

    @property
    def alpha(self) -> float | None:
        total = self.matched + self.mismatched
        return self.matched / total if total > 0 else None

    @property
    def threshold(self) -> float | None:
        """tau: midway between the mean confidence of matched and of mismatched shadow tokens."""
        if self.matched <= 0 or self.mismatched <= 0:
            return None
        return (self.confidence_matched / self.matched + self.confidence_mismatched / self.mismatched) / 2


@dataclass
class DELRound:
    """One round: where it drafted, its budget, and (when observed) what verification found."""

    base: int  # position of the last emitted token when the round began
    exit_layer: int
    budget: int  # draft budget planned (0: a plain full-depth step)
    threshold: float | None  # tau at the exit layer (confidence stop), None: no stop
    confidences: list[float] = field(default_factory=list)  # each draft's probability (confidence stop)
    drafted: int = 0
    accepted: int | None = None  # None for a generation's last round, which is not observed


@dataclass
class DELRun:
    """What DEL decided and learned in the last generation (diagnostics, tests, cost accounting)."""

    rounds: list[DELRound] = field(default_factory=list)
    stats: dict[int, LayerStats] = field(default_factory=dict)
    context_rows: int = 0  # prompt positions counted after the prefill
    shadow_rows: int = 0  # head rows evaluated for shadow tokens (beyond the drafts' own)
    shadow_calls: int = 0  # head calls those took (batched rows)


class DELDecoding:
    name = "del"
    kv = "fill"  # lossless: verification needs the drafts' exact deeper K/V

    def __init__(
        self,
        heads: HeadSet,
        max_draft: int = 18,
        decay: float = 0.95,
        draft_stop: str = "confidence",
        context: int = 32,
        layers: Sequence[int] | None = None,
        head_cost: float = 0.0,
    ) -> None:
        check_del_settings(max_draft, decay, draft_stop, context, head_cost)
        candidates = sorted({int(k) for k in (heads.layers if layers is None else layers)})
        missing = [k for k in candidates if k not in heads.layers]
        if not candidates or missing:
            raise ValueError(
                f"del candidate layers {missing or candidates} must be a non-empty subset of the "
                f"head layers {heads.layers}"
            )
        self.heads, self.candidates = heads, candidates
        self.max_draft, self.decay, self.draft_stop = max_draft, decay, draft_stop
        self.context, self.head_cost = context, head_cost
        self.last_run: DELRun | None = None

    @property
    def exit_layers(self) -> list[int]:
        return list(self.candidates)

    def generate(self, engine: ExitEngine, prompt: torch.Tensor, settings: DecodeSettings) -> DecodeResult:
        planner = _Planner(self, engine)
        previous, engine.tap = engine.tap, planner.tap
        try:
            result = speculative_generate(
                engine, prompt, settings, None, self.max_draft, self.exit_layers, self.heads, planner
            )
            # Shadow-token head rows ran outside the passes' exit checks: counted so the cost model
            # prices them (their FLOPs are already in the heads' count).
            result.stats.trace.extra_head_rows += planner.run.shadow_rows
            return result
        finally:
            engine.tap = previous
            self.last_run = planner.run


def check_del_settings(
    max_draft: int, decay: float, draft_stop: str, context: int, head_cost: float = 0.0
) -> None:
    """Clear errors for DEL's settings, naming the value and the valid range."""
    if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"del max_draft must be an integer >= 1, got {max_draft!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"del decay must be in [0, 1] (1: no decay), got {decay!r}")
    if draft_stop not in DRAFT_STOPS:
        raise ValueError(f"del draft_stop must be one of {', '.join(DRAFT_STOPS)}, got {draft_stop!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"del context must be an integer >= 0 (prompt positions counted), got {context!r}")
    if not (math.isfinite(head_cost) and head_cost >= 0.0):
        raise ValueError(
            f"del head_cost must be a finite number >= 0 (layers a head costs), got {head_cost!r}"
        )


class _Planner:
    """One generation's DEL state: the engine's tap, the draft policy, statistics and choices."""

    def __init__(self, strategy: DELDecoding, engine: ExitEngine) -> None:
        self.s, self.engine = strategy, engine
        self.num_layers = engine.adapter.num_layers
        self.layers = strategy.candidates
        self.confidence = strategy.draft_stop == "confidence"
        self.shared = strategy.heads.spec.architecture == "shared"  # one head for every layer
        self.run = DELRun(stats={k: LayerStats() for k in self.layers})
        self._states: dict[int, list[tuple[list[int], torch.Tensor]]] = {k: [] for k in self.layers}
        self._prefill = True
        self._exit = self.layers[0]
        self._round: DELRound | None = None
        self._stop = False

    # ---------------------------------------------------------------- engine side
    def tap(self, layer: int, positions: list[int], hidden: torch.Tensor) -> None:
        """Keep each candidate layer's rows (the prompt's last `context` during the prefill)."""
        if layer not in self._states:
            return
        if self._prefill:
            keep = min(self.s.context, len(positions))
            if keep:
                self._states[layer].append((positions[-keep:], hidden[-keep:]))
        else:
            self._states[layer].append((positions, hidden))

    def draft(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """The round's draft policy: every draft exits at E, its confidence read if it can stop drafting."""
        if layer != self._exit:
            return None
        self._round.drafted += 1
        if not self.confidence:
            return self.s.heads(layer, hidden)
        logits, summary = self.s.heads.with_summary(layer, hidden, MAX_PROB.summary, MAX_PROB.name)
        confidence = MAX_PROB.from_summary(read_summary(summary))
        self._round.confidences.append(confidence)
        tau = self._round.threshold
        self._stop = tau is not None and confidence < tau
        return logits

    # ---------------------------------------------------------------- RoundPlanner
    @torch.no_grad()
    def prefilled(self, out: StepOutput) -> None:
        self._prefill = False
        rows = min(self.s.context, len(out.final_positions))
        if rows:
            self.run.context_rows = rows
            targets = out.final_logits[-rows:].argmax(-1)
            self._learn({k: (self._rows(k), targets) for k in self.layers}, None)

    def plan(self) -> tuple[ExitCheck, int]:
        for rows in self._states.values():
            rows.clear()
        alpha = {k: a for k, st in self.run.stats.items() if (a := st.alpha) is not None}
        choice = tpl_choice(alpha, self.num_layers, self.s.max_draft, self.s.head_cost)
        if choice is None:  # nothing known yet: the code's first round, one draft at the shallowest
            exit_layer, budget = self.layers[0], 1
        else:
            exit_layer, drafts = choice
            budget = drafts if not self.confidence or drafts == 0 else self.s.max_draft
        tau = self.run.stats[exit_layer].threshold if self.confidence else None
        self._exit, self._stop = exit_layer, False
        self._round = DELRound(self.engine.length, exit_layer, budget, tau)
        self.run.rounds.append(self._round)
        return self.draft, budget

    def stop_drafting(self) -> bool:
        return self._stop

    @torch.no_grad()
    def observe(self, base: int, drafts: list[int], targets: list[int], accepted: int) -> None:
        """Shadow tokens of every candidate layer at positions base..base+accepted, then the update."""
        self._round.accepted = accepted
        kept, known = accepted + 1, min(accepted + 1, len(drafts))
        batches = {}
        for k in self.layers:
            first = known if k == self._exit else 0  # E's draft columns are the drafts themselves
            if first < kept:
                rows = self._rows(k, base)[first:kept]
                batches[k] = (rows, torch.tensor(targets[first:kept], device=rows.device))
        # E's drafts: the first `accepted` match the full model, the one after them (if any) does not.
        confs = self._round.confidences[:known] if self.confidence else []
        drafted = (accepted, known - accepted, sum(confs[:accepted]), sum(confs[accepted:known]))
        self._learn(batches, drafted)

    # ---------------------------------------------------------------- statistics
    def _rows(self, layer: int, base: int | None = None) -> torch.Tensor:
        """The layer's kept rows in position order (from base, checked, when given)."""
        parts = self._states[layer]
        positions = [p for pos, _ in parts for p in pos]
        if base is not None and positions != list(range(base, base + len(positions))):
            raise RuntimeError(f"del: layer {layer} saw positions {positions}, expected from {base} on")
        return parts[0][1] if len(parts) == 1 else torch.cat([h for _, h in parts])

    def _learn(self, batches: dict[int, tuple[torch.Tensor, torch.Tensor]], drafted) -> None:
        """Shadow tokens for `batches` (layer -> rows, full-model targets), one host read, then the
        decayed update of every candidate layer (E's own drafts added from `drafted`)."""
        counts = {k: [0, 0, 0.0, 0.0] for k in self.layers}
        if batches:
            heads, layers = self.s.heads, list(batches)
            sizes = [len(batches[k][0]) for k in layers]
            if self.shared:  # one unembedding serves every layer: one call, as the code's LM head
                logits = heads(layers[0], torch.cat([batches[k][0] for k in layers]))
                self.run.shadow_calls += 1
            else:
                logits = torch.cat([heads(k, batches[k][0]) for k in layers])
                self.run.shadow_calls += len(layers)
            self.run.shadow_rows += sum(sizes)
            targets = torch.cat([batches[k][1] for k in layers])
            if self.confidence:
                best, tokens = torch.log_softmax(logits, -1, dtype=torch.float32).max(-1)
                hits, confs = torch.stack(((tokens == targets).float(), best.exp())).tolist()
            else:
                hits = (logits.argmax(-1) == targets).tolist()
                confs = [0.0] * len(hits)
            start = 0
            for k, n in zip(layers, sizes, strict=True):
                c = counts[k]
                for hit, conf in zip(hits[start : start + n], confs[start : start + n], strict=True):
                    c[0 if hit else 1] += 1
                    c[2 if hit else 3] += conf
                start += n
        if drafted is not None:
            c = counts[self._exit]
            for i, value in enumerate(drafted):
                c[i] += value
        for k in self.layers:
            self.run.stats[k].update(self.s.decay, *counts[k])
