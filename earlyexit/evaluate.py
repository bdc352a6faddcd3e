"""lm-eval with early exits in the loop, plus local task variants that need no download.

Teacher-forced scoring is exact with respect to the exit engine: the engine fills the deeper
K/V of exited tokens with their true deeper values, so every position's hidden states equal a
plain full forward's, and one forward plus the heads gives each position's early-exit logits.
Exits are applied at *every* scored position (the engine's prefill would run the first
generated token at full depth; scoring it the same way as later tokens measures what exits do
to each prediction).

Tasks: the standard ones go through lm-eval's own registry (they need the Hugging Face hub);
``*_local`` variants reuse lm-eval's own YAML (``include``) but read ``../shared/data/eval``;
``stdlib_lambada`` is generated from the held-out stdlib corpus, so it works anywhere.
"""

from __future__ import annotations

import json
import keyword
import logging
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval
import torch
import yaml
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from earlyexit.adapter import ModelAdapter
from earlyexit.confidence import should_exit
from earlyexit.decoding import DecodeSettings, EarlyExitDecoding, FullDecoding
from earlyexit.engine import ExitEngine
from earlyexit.heads import HeadSet
from earlyexit.policy import ThresholdPolicy

log = logging.getLogger(__name__)

__all__ = [
    "LOCAL_TASKS",
    "STANDARD_TASKS",
    "STDLIB_TASK",
    "EarlyExitLM",
    "LocalTask",
    "default_cache_dir",
    "early_exit_logits",
    "evaluate",
    "resolve_tasks",
    "stdlib_lambada_examples",
    "valid_tasks",
    "validate_tasks",
    "write_task_configs",
]

STANDARD_TASKS = ("lambada_openai", "piqa", "arc_easy", "sciq", "hellaswag", "winogrande")
STDLIB_TASK = "stdlib_lambada"


# ----------------------------------------------------------------------------- scoring


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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.policy = policy
        self.batch_size = int(batch_size)
        self.max_length = min(int(max_length or adapter.max_positions), adapter.max_positions)
        self.max_gen_toks = int(max_gen_toks)
        self.disable_tqdm = disable_tqdm
        self.exit_histogram: Counter[int] = Counter()
        self._engine: ExitEngine | None = None
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
        # Longest first: padding is minimal within a batch and the slowest batch comes first.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm or self.disable_tqdm)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in chunk]
            width = max(len(x) for x in inputs)
            # Right padding: a causal model's real positions never see the pad tokens.
            batch = torch.tensor([x + [self.eot_token_id] * (width - len(x)) for x in inputs])
            logits, exits = early_exit_logits(
                self.adapter, self.policy.heads if self.policy else None, self.policy, batch
            )
            for row, i in enumerate(chunk):
                request_str, _, cont = requests[i]
                end = len(inputs[row])
                span = slice(end - len(cont), end)
                # Softmax over the continuation only: [B, T, V] in float32 would be GBs for Pythia.
                lp = F.log_softmax(logits[row, span].float(), dim=-1)
                target = torch.tensor(cont, device=lp.device)
                answer = (
                    float(lp.gather(-1, target[:, None]).sum()),
                    bool((lp.argmax(-1) == target).all()),
                )
                self.exit_histogram.update(exits[row, span].tolist())
                results[i] = answer
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
                bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

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
        """Greedy generation with the exit policy, cut at the first ``until`` string.

        The decoding strategies have no stop-string hook, so each request generates up to
        ``max_gen_toks`` tokens (or EOS) and the text is cut afterwards; the output is the same.
        """
        strategy = EarlyExitDecoding(self.policy) if self.policy else FullDecoding()
        engine = self._get_engine(strategy.exit_layers)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        outputs: list[str] = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm or self.disable_tqdm):
            context, gen_kwargs = req.args
            until, max_gen = self._generation_args(gen_kwargs, eos_text)
            max_ctx = self.max_length - max_gen
            if max_ctx < 1:
                raise ValueError(f"max_gen_toks={max_gen} leaves no room in max_length={self.max_length}")
            ids = self.tok_encode(context)[-max_ctx:] or [self.prefix_token_id]
            result = strategy.generate(
                engine,
                torch.tensor(ids),
                DecodeSettings(max_new_tokens=max_gen, eos_token_id=self.eot_token_id),
            )
            self._count_generation(result)
            tokens = [t for t in result.ids if t != self.eot_token_id]
            text = self.tok_decode(tokens)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
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

    def _get_engine(self, exit_layers: list[int]) -> ExitEngine:
        if self._engine is None or self._engine.exit_layers != sorted(exit_layers):
            self._engine = ExitEngine(self.adapter, exit_layers=exit_layers, max_len=self.max_length)
        return self._engine


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class LocalTask:
    """An offline copy of an lm-eval task: its YAML, with the dataset swapped for a local JSONL."""

    name: str
    base: str  # lm-eval's own YAML, relative to lm_eval/tasks
    data_file: str  # under ../shared/data/eval
    split: str  # the split the local file holds (and that gets scored)
    note: str


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask(
            "lambada_openai_local",
            "lambada/lambada_openai.yaml",
            "lambada_openai_test.jsonl",
            "test",
            "lambada_openai from a local JSONL; same split (test) and scoring as lm-eval's",
        ),
        LocalTask(
            "piqa_local",
            "piqa/piqa.yaml",
            "piqa_validation.jsonl",
            "validation",
            "piqa from a local JSONL; same split (validation) and scoring as lm-eval's",
        ),
        LocalTask(
            "arc_easy_local",
            "arc/arc_easy.yaml",
            "arc_easy_validation.jsonl",
            "validation",
            "arc_easy scored on the VALIDATION split (lm-eval's arc_easy scores test, not available here)",
        ),
        LocalTask(
            "sciq_local",
            "sciq/sciq.yaml",
            "sciq_validation.jsonl",
            "validation",
            "sciq scored on the VALIDATION split (lm-eval's sciq scores test, not available here)",
        ),
    )
}
LOCAL_OF = {t.base.split("/")[-1].removesuffix(".yaml"): t.name for t in LOCAL_TASKS.values()}

# stdlib_lambada: LAMBADA-style, the last identifier of a line, given the code before it.
STDLIB_VERSION = 1
STDLIB_EXAMPLES = 500
STDLIB_CONTEXT_CHARS = 400
_LINE_END_IDENT = re.compile(r"(?<!\w)([A-Za-z_]\w{2,})[ \t]*$", re.MULTILINE)


def valid_tasks() -> list[str]:
    return [*STANDARD_TASKS, *LOCAL_TASKS, STDLIB_TASK]


def validate_tasks(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Check task names before anything expensive (e.g. loading a model) happens."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no tasks given; valid tasks: {', '.join(valid_tasks())}")
    bad = [n for n in names if n not in valid_tasks()]
    if bad:
        raise ValueError(
            f"unknown task(s) {', '.join(map(repr, bad))}; valid tasks: standard (lm-eval, needs the "
            f"hub): {', '.join(STANDARD_TASKS)}; local: {', '.join([*LOCAL_TASKS, STDLIB_TASK])}"
        )
    return names


def resolve_tasks(names: list[str] | tuple[str, ...] | str, offline: bool | None = None) -> list[str]:
    """The lm-eval task names to run: offline, standard tasks become their ``*_local`` variants.

    ``offline=None`` means offline when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE says so, or when a
    standard task is asked for and the hub does not answer.
    """
    names = validate_tasks(names)
    standard = [n for n in names if n in STANDARD_TASKS]
    if offline is None:
        offline = _env_offline() or (bool(standard) and _hub_unreachable())
    if not offline:
        return names
    missing = [n for n in standard if n not in LOCAL_OF]
    if missing:
        raise ValueError(
            f"task(s) {', '.join(missing)} need the Hugging Face hub and have no local variant; offline "
            f"tasks: {', '.join([*LOCAL_TASKS, STDLIB_TASK])}"
        )
    resolved = [LOCAL_OF.get(n, n) for n in names]
    if standard:
        log.warning("offline: running %s instead of %s", [LOCAL_OF[n] for n in standard], standard)
    return list(dict.fromkeys(resolved))


def _env_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def _hub_unreachable() -> bool:
    from earlyexit.loading import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason is not None:
        log.warning("the Hugging Face hub cannot be reached (%s); using local task variants", reason)
    return reason is not None


def _lm_eval_yaml(relative: str) -> Path:
    path = Path(lm_eval.__file__).parent / "tasks" / relative
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval {lm_eval.__version__} has no task config {relative} ({path})")
    return path


def _local_config(task: LocalTask, data_dir: Path | None) -> dict[str, Any]:
    path = (data_dir / task.data_file) if data_dir is not None else None
    if path is None or not path.is_file():
        where = path or f"../shared/data/eval/{task.data_file} (no ../shared/data next to the repository)"
        base = task.base.split("/")[-1].removesuffix(".yaml")
        raise FileNotFoundError(
            f"task {task.name!r} reads {where}, which does not exist; put the file there or run the "
            f"standard task {base!r} with hub access"
        )
    base = _lm_eval_yaml(task.base)
    # Only the local split exists; lm-eval scores test if present, else validation.
    splits = {"training_split": None, "validation_split": None, "test_split": None}
    splits[f"{task.split}_split"] = task.split
    return {
        "include": str(base),
        "task": task.name,
        "tag": [],  # keep the local copy out of lm-eval's tag groups (e.g. "lambada", "ai2_arc")
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {task.split: str(path.resolve())}},
        **splits,
        "metadata": {**_base_metadata(base), "note": task.note},
    }


def _base_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(path.read_text()).get("metadata") or {}
    except yaml.YAMLError:  # a YAML with !function tags; the version is only informative
        meta = {}
    return dict(meta)


def stdlib_lambada_examples(
    n: int = STDLIB_EXAMPLES, context_chars: int = STDLIB_CONTEXT_CHARS
) -> list[dict]:
    """Deterministic (context, target) pairs from the held-out stdlib corpus.

    The target is the last identifier of a line (3+ characters, not a keyword) that already
    occurs in the context, so it can be recalled rather than guessed, as in LAMBADA. The
    context is up to ``context_chars`` characters, starting at a line boundary, ending just
    before the target; the line's own text before the target is always present.
    """
    from earlyexit.data import load_documents

    per_doc: list[list[dict]] = []
    for doc in load_documents("stdlib", "heldout"):
        found = []
        for match in _LINE_END_IDENT.finditer(doc):
            target, pos = match.group(1), match.start(1)
            line_start = doc.rfind("\n", 0, pos) + 1
            if keyword.iskeyword(target) or not doc[line_start:pos].strip():
                continue
            start = max(0, pos - context_chars)
            if start > 0:
                newline = doc.find("\n", start, line_start)
                start = newline + 1 if newline >= 0 else line_start
            context = doc[start:pos]
            if re.search(rf"(?<!\w){re.escape(target)}(?!\w)", context) is not None:
                found.append({"context": context, "target": target})
        if found:
            per_doc.append(found)
    if not per_doc:
        raise RuntimeError("the held-out stdlib corpus gave no stdlib_lambada examples")
    # An even share per document, so a few long tables (e.g. codecs) do not dominate.
    quota = math.ceil(n / len(per_doc))
    rows = [row for found in per_doc for row in _evenly(found, quota)]
    return _evenly(rows, n)


def _evenly(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _stdlib_config(cache_dir: Path) -> dict[str, Any]:
    import sys

    tag = f"v{STDLIB_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    path = (cache_dir / f"stdlib_lambada-{tag}.jsonl").resolve()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for row in stdlib_lambada_examples():
                fh.write(json.dumps(row) + "\n")
        tmp.replace(path)
    return {
        "include": str(_lm_eval_yaml("lambada/lambada_openai.yaml")),  # lambada's metrics
        "task": STDLIB_TASK,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "doc_to_text": "context",
        "doc_to_target": "target",
        "should_decontaminate": False,
        "metadata": {
            "version": STDLIB_VERSION,
            "note": "LAMBADA-style: predict the last identifier of a line of held-out stdlib code",
        },
    }


def default_cache_dir() -> Path:
    """Where generated task data lives: ``$EARLYEXIT_CACHE/eval`` (default ``artifacts/eval``)."""
    return Path(os.environ.get("EARLYEXIT_CACHE", "artifacts")) / "eval"


def write_task_configs(
    tasks: list[str],
    include_dir: str | Path,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> list[Path]:
    """Write the YAMLs of the local tasks among ``tasks`` into ``include_dir`` (absolute paths).

    Relative data paths would resolve against the working directory at evaluation time, so
    every path in the YAML is absolute.
    """
    from earlyexit.paths import shared_data_dir

    if data_dir is None:
        shared = shared_data_dir()
        data_dir = shared / "eval" if shared is not None else None
    data = Path(data_dir) if data_dir is not None else None
    written = []
    for name in tasks:
        if name in LOCAL_TASKS:
            config = _local_config(LOCAL_TASKS[name], data)
        elif name == STDLIB_TASK:
            config = _stdlib_config(Path(cache_dir) if cache_dir is not None else default_cache_dir())
        else:
            continue
        path = Path(include_dir) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def evaluate(
    lm: lm_eval.api.model.LM,
    tasks: list[str],
    limit: int | None = None,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks (zero-shot) on ``lm``; returns ``{task: {metric: value}}`` as plain floats.

    Task names are checked first (ValueError lists the valid ones). Results are keyed by the
    task actually run, so an offline ``piqa`` comes back as ``piqa_local``.
    """
    names = resolve_tasks(tasks, offline)
    needs_defaults = any(n in STANDARD_TASKS for n in names)
    with tempfile.TemporaryDirectory(prefix="earlyexit-tasks-") as include_dir:
        write_task_configs(names, include_dir, cache_dir=cache_dir, data_dir=data_dir)
        # Indexing lm-eval's own ~15k task YAMLs takes ~10 s: only when a standard task needs it.
        manager = TaskManager(include_path=include_dir, include_defaults=needs_defaults)
        missing = [n for n in names if n not in manager.all_tasks]
        if missing:
            raise RuntimeError(f"lm-eval did not register task(s) {missing} (a task config failed to parse)")
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
        )
    return {task: _plain_metrics(values) for task, values in out["results"].items() if task in names}


def _plain_metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.5}``."""
    metrics = {}
    for key, value in values.items():
        if "," not in key or isinstance(value, str | bool) or value is None:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            continue
        if math.isnan(metrics[name]) and name.endswith("_stderr"):
            del metrics[name]
    return metrics
