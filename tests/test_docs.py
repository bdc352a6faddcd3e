"""README.md and docs/*.md: the commands in them run as written, and their links lead somewhere.

- Every ``python run.py ...`` command (fenced code blocks and inline code) composes with Hydra and
  passes the runner's checks (`earlyexit.harness.runner.validate`), as the run itself would before
  loading any model. A sweep (``-m``) is validated value by value: each comma-separated value with
  the first value of every other swept key.
- Every ``make TARGET`` names a target of the Makefile.
- Every relative link resolves to a file, and a ``#anchor`` to a heading of it.
- Every docs/ page is linked from the README.

Module paths such as ``earlyexit.measure.cost_model`` named in these pages are checked by
tests/harness/test_runner.py::test_every_module_path_a_message_names_exists.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

import earlyexit.harness.runner as runner
from earlyexit.model.loading import pythia_size

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands a user can copy that cannot be validated here: each names a path that does not exist on
# this machine (a cluster's shared filesystem). Counted, so a command never silently drops out.
EXPECTED_SKIPPED = 1
# At least this many `python run.py` commands (sweeps count once) are validated.
MIN_VALIDATED = 34

# Keys whose value is written by the run, not read: such a path need not exist, only the place it
# would be created (its top-level directory, e.g. /tmp). Any other path a command names must exist.
OUTPUT_KEYS = ("results.path", "cache_dir")
# Every Pythia config trains its heads on this hub dataset. No hub answers here and the datasets
# cache does not hold it, so for Pythia commands that keep it, its resolution is mocked (below);
# commands that pass a local data.source are validated unmocked.
PYTHIA_HUB_TEXT = "Salesforce/wikitext:wikitext-103-raw-v1"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    page: str
    text: str
    multirun: bool
    overrides: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}: {self.text[:110]}"


def _blocks(text: str) -> tuple[list[str], str]:
    """(fenced code blocks, the text outside them)."""
    return FENCE.findall(text), FENCE.sub("", text)


def _code_lines(text: str) -> list[str]:
    """Each command line of the fenced blocks (backslash continuations joined) and each inline span."""
    blocks, prose = _blocks(text)
    lines = []
    for block in blocks:
        lines += block.replace("\\\n", " ").splitlines()
    lines += [span.replace("\n", " ") for span in INLINE.findall(prose)]
    return [line.strip() for line in lines if line.strip()]


def _words(line: str) -> list[str]:
    """The shell words of a line without leading VAR=value assignments (and without comments)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words


def run_commands(page: Path) -> list[Command]:
    out = []
    for line in _code_lines(page.read_text()):
        words = _words(line)
        if len(words) >= 2 and Path(words[0]).name in ("python", "python3") and words[1] == "run.py":
            args = words[2:]
            multirun = any(a in ("-m", "--multirun") for a in args)
            overrides = tuple(a for a in args if a not in ("-m", "--multirun"))
            out.append(Command(page.relative_to(ROOT).as_posix(), line, multirun, overrides))
    return out


COMMANDS = [c for page in PAGES for c in run_commands(page)]


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def missing_path(command: Command) -> str | None:
    """The first path the command names that does not exist here (see OUTPUT_KEYS), or None."""
    for override in command.overrides:
        key, _, value = override.partition("=")
        for part in value.split(","):
            if not _looks_like_path(part):
                continue
            path = Path(part).expanduser()
            path = path if path.is_absolute() else ROOT / path
            if key.lstrip("+~") in OUTPUT_KEYS:
                top = Path(path.parts[0]) / path.parts[1] if len(path.parts) > 1 else path
                if top.exists():
                    continue
            elif path.exists():
                continue
            return part
    return None


def combinations(command: Command) -> list[list[str]]:
    """The override lists to validate: one for a plain run; for a sweep, every value of every swept
    key with the first values of the others. Hydra's own settings (launcher, sweep dirs) are dropped:
    they choose where jobs run, not what they are."""
    parsed = OverridesParser.create().parse_overrides(list(command.overrides))
    kept = [
        (text, o)
        for text, o in zip(command.overrides, parsed, strict=True)
        if not o.key_or_group.startswith("hydra")
    ]
    swept = [o for _, o in kept if o.is_sweep_override()]
    assert command.multirun or not swept, f"comma values need -m: {command.text}"
    first = {id(o): f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" for o in swept}
    base = [first.get(id(o), text) for text, o in kept]
    combos = [base]
    for i, (_, o) in enumerate(kept):
        if not o.is_sweep_override():
            continue
        for value in list(o.sweep_string_iterator())[1:]:
            combo = list(base)
            combo[i] = f"{o.get_key_element()}={value}"
            combos.append(combo)
    return combos


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def needs_hub_text(cfg) -> bool:
    return pythia_size(str(cfg.model.name)) is not None and cfg.data.source == PYTHIA_HUB_TEXT


def test_docs_name_run_commands_only_in_code():
    """Every mention of `python run.py` is in a code block or inline code, so the test below sees
    it; and there are commands to check."""
    for page in PAGES:
        text = page.read_text()
        found = sum(1 for line in _code_lines(text) if "python run.py" in line)
        assert text.count("python run.py") == found, f"{page.name}: `python run.py` outside code"
    assert len(COMMANDS) >= MIN_VALIDATED + EXPECTED_SKIPPED


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_docs_run_command_composes_and_validates(command, monkeypatch):
    path = missing_path(command)
    if path is not None:
        pytest.skip(f"names {path}, which does not exist here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: resolve offline at once, no probe
    real = runner.resolve_text_source

    def hub_text_cached(source, offline=None, cache_dir=None):
        # Pythia's wikitext-103 from the hub is not available offline here; on a user's machine it
        # comes from the hub or the datasets cache. Any other source is resolved for real.
        return "datasets_cache" if source == PYTHIA_HUB_TEXT else real(source, offline, cache_dir)

    for overrides in combinations(command):
        cfg = compose_config(overrides)
        with monkeypatch.context() as m:
            if needs_hub_text(cfg):
                m.setattr(runner, "resolve_text_source", hub_text_cached)
            runner.validate(cfg)


def test_docs_commands_validated_and_skipped_are_counted():
    skipped = [c for c in COMMANDS if missing_path(c) is not None]
    validated = len(COMMANDS) - len(skipped)
    assert len(skipped) == EXPECTED_SKIPPED, [c.id for c in skipped]
    assert validated >= MIN_VALIDATED, validated


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def test_docs_make_targets_exist():
    targets, named = make_targets(), set()
    for page in PAGES:
        for line in _code_lines(page.read_text()):
            words = _words(line)
            if words[:1] == ["make"]:
                named |= {w for w in words[1:] if "=" not in w and not w.startswith("-")}
    assert {"demo", "test", "study", "figures"} <= named
    assert named <= targets, sorted(named - targets)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = _blocks(page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


def links(page: Path) -> list[str]:
    _, prose = _blocks(page.read_text())
    return [t for t in LINK.findall(prose) if not re.match(r"^[a-z]+:", t)]


def test_docs_links_resolve():
    broken = []
    for page in PAGES:
        for target in links(page):
            path_part, _, anchor = target.partition("#")
            path = (page.parent / path_part).resolve() if path_part else page
            if not path.is_file():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
    assert sum(len(links(p)) for p in PAGES) > 30


def test_docs_pages_are_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    pages = {p.resolve() for p in PAGES[1:]}
    assert pages, "docs/ has no pages"
    assert pages <= linked, sorted(p.name for p in pages - linked)
