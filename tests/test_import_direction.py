"""Imports run one way: entry points -> experiment -> training, models, data -> contract.

Read from the source (an ast walk), so a wrong import fails here even where no test
happens to import the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hemo_jax"
ENTRY_POINTS = ("train", "evaluate", "predict", "stack", "encode")

# Package -> the hemo_jax packages and modules it must not import.
FORBIDDEN = {
    "contract": ("data", "models", "training", "experiment", *ENTRY_POINTS),
    "models": ("data", "training", "experiment", *ENTRY_POINTS),
    "data": ("models", "training", "experiment", *ENTRY_POINTS),
    "training": ("experiment", *ENTRY_POINTS),
    "experiment": ENTRY_POINTS,
}
# Only these read configs: the experiment layer and the entry points.
CONFIG_READERS = ("experiment", *ENTRY_POINTS)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, absolute; ``from hemo_jax.x import y`` gives
    both ``hemo_jax.x`` and ``hemo_jax.x.y`` (y may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _top(module: str) -> str | None:
    """The hemo_jax package or entry-point module a module name lies in."""
    parts = module.split(".")
    return parts[1] if parts[0] == "hemo_jax" and len(parts) > 1 else None


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _where(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    banned = FORBIDDEN.get(_where(path), ())
    wrong = sorted(m for m in _imports(path) if _top(m) in banned)
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_experiment_layer_and_entry_points_read_configs(path):
    if _where(path) in CONFIG_READERS:
        return
    wrong = sorted(m for m in _imports(path) if m.split(".")[0] in ("ml_collections", "configs"))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_the_walk_sees_the_imports_it_checks():
    """The checks above would pass on an empty walk; this one would not."""
    assert "hemo_jax.experiment.experiment.Experiment" in _imports(PACKAGE / "train.py")
    assert {_where(p) for p in _files()} >= {"models", "data", "training", "experiment", "train"}
