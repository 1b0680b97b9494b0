"""The preprocessing side's import directions, read from the source (nothing is imported).

- nothing on the real path imports ``preprocess.synthetic`` (the offline world): only the
  command line, which dispatches ``synth``, and the synthetic package itself;
- no import circles among the preprocess modules, counting imports inside functions too;
- of the JAX side, only ``hemo_jax.contract``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "preprocess"
SYNTHETIC = "preprocess.synthetic"
MAY_IMPORT_SYNTHETIC = {"preprocess.__main__"}  # wires `python -m preprocess synth`


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports, anywhere in the file; ``from p import m`` counts as
    ``p.m`` when ``p.m`` is a module."""
    names = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {  # `if TYPE_CHECKING:` blocks never run
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known
            )
    return names


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        targets = imported(path, known)
        # Importing a.b.c runs a/__init__ and a/b/__init__ too.
        graph[name] = {
            ".".join(t.split(".")[:i])
            for t in targets
            for i in range(1, t.count(".") + 2)
            if ".".join(t.split(".")[:i]) in known
        } - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_the_imports_it_judges():
    """The checks below see what they claim to: the graph holds known edges."""
    graph = import_graph()
    assert "preprocess.steps" in graph["preprocess.run"]
    assert "preprocess.labeling.prompts" in graph["preprocess.run"]  # `from p import m`
    assert "preprocess.keypoints.openpose_binary" in graph["preprocess.steps"]  # in a function
    assert "preprocess.synthetic.plan" in graph["preprocess.synthetic.corpus"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # A typing-only import runs nothing, so it makes no circle.
    assert "preprocess.synthetic.vlm_sim" not in graph["preprocess.synthetic.vlm_batch"]


def test_no_real_step_imports_the_synthetic_world():
    offenders = {
        name: sorted(t for t in targets if t == SYNTHETIC or t.startswith(SYNTHETIC + "."))
        for name, targets in import_graph().items()
        if not (name == SYNTHETIC or name.startswith(SYNTHETIC + "."))
        and name not in MAY_IMPORT_SYNTHETIC
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circles():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("name", sorted(source_modules()))
def test_only_the_contract_of_the_jax_side(name):
    path = source_modules()[name]
    jax_side = {t for t in imported(path, set()) if t.split(".")[0] == "hemo_jax"}
    assert all(t.startswith("hemo_jax.contract") for t in jax_side), jax_side
