"""Top-level packages import only downwards, and never in a cycle (docs/design.md, "Layers").

Every ``import`` of ``lqs_megatron`` is read with ``ast`` (function-level imports included, since
they are how an upward dependency hides); a new upward or cyclic import between top-level
packages fails here with its file and line. ``KNOWN`` lists today's exceptions; it may only shrink
(a listed import that is gone must leave the list).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.utils import REPO

PACKAGE = Path(REPO) / "lqs_megatron"

# The layer of each top-level module or package, bottom first. Within a layer, imports may go
# either way as long as they make no cycle.
LEVELS = {
    # errors, utilities, the settings machinery, process groups and dims (the parallel basics)
    "": 0,  # lqs_megatron/__init__.py: the version
    "_C": 0,  # the C++ extension
    "errors": 0,
    "utils": 0,
    "options": 0,
    "parallel": 0,  # dims and process groups, tp mappings, parallel layers, rank slicing, broadcast
    "kernels": 1,  # Triton kernels and their torch references
    "data": 2,  # formats, tokenization, datasets
    "models": 3,  # the decoder, tensor parallelism, HF conversion, loading
    "training": 4,  # loss, optimizer, checkpoints, the trainer, evaluation, export
    "lqs": 5,  # the steps built on training
    "scorer": 5,
    "curate": 5,
    "demo": 5,
    "pipeline": 6,  # the plan of public commands
    "cli": 7,  # argument parsing, the only user of argparse
    "__main__": 8,
}

# Today's exceptions: (importing module, imported module) -> why, and what removes it.
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules a ``from ... import`` names (a name that is a submodule counts as that module)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        rel = Path(*sub.split(".")[1:]) if sub.startswith("lqs_megatron.") else None
        is_sub = rel is not None and (
            (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel).is_dir() or any(PACKAGE.glob(f"{rel}.*.so"))
        )
        out.append(sub if is_sub else target)
    return out


@functools.cache
def imports() -> list[tuple[str, str, str]]:
    """``(importer, imported, "file:line")`` for every import of lqs_megatron inside it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(node, module, path.name == "__init__.py")
            else:
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            found += [(module, t, where) for t in targets if t == "lqs_megatron" or t.startswith("lqs_megatron.")]
    return found


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The package edges that lie on a cycle (both ends in one strongly connected component)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return {(a, b) for a, b in edges if a in reach(b)}


def violations() -> dict[tuple[str, str], list[str]]:
    """``(importer, imported) -> [file:line]`` of every upward import between packages, and of every
    import between two packages of one layer that closes a cycle (a cycle across layers always holds
    an upward import, which is the one reported)."""
    found = [(a, b, w) for a, b, w in imports() if top(a) != top(b)]
    cyclic = _cycles({(top(a), top(b)) for a, b, _ in found})
    out: dict[tuple[str, str], list[str]] = {}
    for a, b, where in found:
        up, level = LEVELS[top(b)] > LEVELS[top(a)], LEVELS[top(b)] == LEVELS[top(a)]
        if (up or (level and (top(a), top(b)) in cyclic)) and where not in out.get((a, b), []):
            out.setdefault((a, b), []).append(where)
    return out


def test_every_top_level_package_has_a_layer():
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    names |= {top(m) for pair in imports() for m in pair[:2]}
    missing = sorted(n for n in names - {"__init__"} if n not in LEVELS)
    assert not missing, f"give these a layer in LEVELS (and docs/design.md): {missing}"


def test_no_new_upward_or_cyclic_import():
    new = {k: v for k, v in violations().items() if k not in KNOWN}
    lines = [
        f"{w}: {a} imports {b} (layer {LEVELS[top(a)]} -> {LEVELS[top(b)]})" for (a, b), ws in new.items() for w in ws
    ]
    assert not lines, "upward or cyclic imports (docs/design.md, Layers):\n" + "\n".join(lines)


def test_known_exceptions_only_shrink():
    gone = [k for k in KNOWN if k not in violations()]
    assert not gone, f"fixed: remove these from KNOWN: {gone}"


def test_function_level_imports_are_seen():
    """The walker reads imports inside functions (where inverted layers hide)."""
    found = {(a, b) for a, b, _ in imports()}
    assert ("lqs_megatron.lqs.report", "lqs_megatron.data.tokenizers.fingerprint") in found  # inside _tokenizer_dir
    assert (
        "lqs_megatron.data.datasets.indexed",
        "lqs_megatron._C",
    ) in found  # `from lqs_megatron import _C`, in a function


def test_no_module_only_re_exports_another():
    """A module whose whole body is a docstring, imports of ``lqs_megatron`` and ``__all__`` is a compatibility
    shim: import the module that holds the names instead (packages' ``__init__.py`` may gather their modules')."""
    shims = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        own = [
            node
            for node in body
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lqs_megatron"))
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
            and not (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"])
        ]
        if body and not own:
            shims.append(str(path.relative_to(PACKAGE.parent)))
    assert not shims, f"modules that only re-export others' names: {shims}"


def test_every_module_logger_is_named_logger():
    """One name for a module's logger (``logger = logging.getLogger(__name__)``), so grep finds every log call."""
    import re

    other = [
        f"{path.relative_to(PACKAGE.parent)}:{m.group(1)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for m in re.finditer(r"^(\w+) = logging\.getLogger\(", path.read_text(), re.MULTILINE)
        if m.group(1) != "logger"
    ]
    assert not other, other
