"""Every test that starts processes (``tests.utils.spawn`` or torchrun) carries the ``distributed``
marker, so ``pytest -m "not distributed"`` really runs in one process."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.utils import REPO

TESTS = Path(REPO) / "tests"


def _marks(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        node = d.func if isinstance(d, ast.Call) else d
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
    return out


def _module_marks(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            return {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)}
    return set()


def _spawns(fn: ast.FunctionDef) -> bool:
    """Calls ``spawn``, or runs a subprocess of a command that names torchrun's module."""
    calls = {getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(fn) if isinstance(n, ast.Call)}
    torchrun = any(isinstance(n, ast.Constant) and n.value == "torch.distributed.run" for n in ast.walk(fn))
    return "spawn" in calls or (torchrun and bool(calls & {"run", "Popen", "check_call", "check_output"}))


def test_process_spawning_tests_are_marked_distributed():
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marks = _module_marks(tree)
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_") and _spawns(fn):
                if "distributed" not in _marks(fn) | module_marks:
                    unmarked.append(f"{path.relative_to(REPO)}::{fn.name}")
    assert not unmarked, f"mark these @pytest.mark.distributed: {unmarked}"
