"""The package layout is the architecture: data <- model <- exits <- decoding <- tasks <- measure <- harness.

Each module may import only from its own subpackage or the ones before it; this reads every
import (top-level and inside functions) from the source, so a lazy upward import fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "earlyexit"
ORDER = ["data", "model", "exits", "decoding", "tasks", "measure", "harness"]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "earlyexit"]
    return [n for n in names if n == "earlyexit" or n.startswith("earlyexit.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in ORDER)


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layered subpackages: {loose}"
    assert {p.relative_to(PACKAGE).parts[0] for p in MODULES} == set(ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_point_upward(path):
    own = ORDER.index(path.relative_to(PACKAGE).parts[0])
    upward = []
    for module in _imports(path):
        layer = _layer(module)
        if layer is None and module != "earlyexit":
            upward.append(f"{module} (not in a layer)")
        elif layer is not None and ORDER.index(layer) > own:
            upward.append(module)
    assert upward == [], f"{path.relative_to(PACKAGE)} imports upward: {upward}"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from earlyexit.harness.runner import run\n")
    assert [_layer(m) for m in _imports(bad)] == ["harness"]
