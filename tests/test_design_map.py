"""docs/design.md's layout names every module under ``lqs_megatron/`` (and nothing that is gone).

The layout is an indented tree inside the fenced block under "## Layout": a name ending in ``/`` is a
folder, the names under it (indented two more spaces) are its contents, and ``#`` starts a comment.
A module added without its line in the map, or a line left behind by a removed module, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.utils import REPO

PACKAGE = Path(REPO) / "lqs_megatron"


def layout_paths() -> set[str]:
    text = (Path(REPO) / "docs" / "design.md").read_text()
    block = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/design.md has no fenced layout block under '## Layout'"
    paths, stack = set(), []  # stack: (indent, folder)
    for line in block.group(1).splitlines():
        entry = line.split("#", 1)[0].rstrip()
        if not entry.strip():
            continue
        indent = len(entry) - len(entry.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = entry.strip()
        path = "/".join([f for _, f in stack] + [name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
    return paths


def package_modules() -> set[str]:
    found = set()
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent)
        if "__pycache__" in rel.parts:
            continue
        found.add(str(rel.parent) if p.name == "__init__.py" else str(rel))
    return found


def test_every_module_is_on_the_map():
    listed = layout_paths()
    missing = sorted(package_modules() - listed)
    assert not missing, f"add these to docs/design.md's layout: {missing}"


def test_the_map_names_no_module_that_is_gone():
    listed = {p for p in layout_paths() if p.startswith("lqs_megatron/") and (p.endswith(".py") or "." not in p)}
    stale = sorted(p for p in listed if not (Path(REPO) / p).exists())
    assert not stale, f"docs/design.md's layout names what does not exist: {stale}"


def test_the_parser_reads_nesting():
    """The tree reader itself: a nested module resolves to its full path (guards the test above)."""
    assert "lqs_megatron/data/datasets/indexed.py" in layout_paths()
