"""Clean English text that ships with Python itself: the ``pydoc`` topics and stdlib docstrings.

Two kinds of *units* (one explanatory text each, with a name to ask about):

- **topic sections**: ``pydoc_data.topics.topics`` (the language reference pages
  behind ``help("assignment")``), each cut at its section headings (a line underlined
  with ``*``, ``=``, ``-``, ``~`` or ``^``); a section's name is its heading;
- **docstrings**: of the modules in :data:`DOCSTRING_MODULES` and of the public classes,
  functions and methods defined at the top level of their source (private names
  skipped; ``inspect.cleandoc`` applied; a text seen before is skipped).

The docstrings are read from the standard library's *source files* with :mod:`ast`,
never by importing the modules: nothing runs, a module that another library patched
at run time (pytest replaces ``pdb.set_trace``, for one) reads the same, and
definitions made under a platform ``if`` are not seen at all. Everything is sorted
(topic keys, module names, attribute names) and no signature or ``repr`` is used: the
units are the same on every machine with the same Python release and its stdlib
sources (``pydoc_data`` is regenerated for every CPython release, so a patch release
may change a few topic texts). A module whose source is missing (a Python version
without it) is skipped.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from dataclasses import dataclass

DOCSTRING_MODULES: tuple[str, ...] = tuple(
    sorted(
        """
        abc argparse ast base64 bdb bisect calendar cmd code codecs codeop collections colorsys
        concurrent.futures configparser contextlib copy csv dataclasses difflib dis doctest email.message
        email.utils enum filecmp fileinput fnmatch fractions functools getopt gettext glob graphlib gzip heapq
        html html.parser inspect ipaddress json linecache logging logging.handlers mailbox mimetypes numbers
        optparse pathlib pdb pkgutil plistlib pprint profile pstats pydoc queue quopri random re reprlib sched
        secrets shlex shutil socketserver statistics string tabnanny tarfile tempfile textwrap threading timeit
        tokenize tomllib trace traceback types typing unittest unittest.mock urllib.parse uuid warnings wave
        weakref xml.dom.minidom xml.etree.ElementTree zipfile zoneinfo
        """.split()
    )
)
"""The pure-Python standard-library modules whose docstrings feed the demo corpus (sorted)."""

_HEADING = re.compile(r"^(?P<title>\S[^\n]*)\n(?P<rule>([*=\-~^])\3{2,})[ \t]*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


@dataclass(frozen=True)
class Unit:
    """One explanatory text from Python's own documentation."""

    uid: str
    """Stable id: ``topic:<key>#<section>`` or ``doc:<qualified name>``."""
    group: str
    """The stream it belongs to in the corpus: ``topic:<key>`` or ``module:<module>``."""
    kind: str
    """``topic``, ``module``, ``class``, ``function`` or ``method``."""
    name: str
    """What the text explains: a section heading or a qualified Python name."""
    text: str
    """The text (paragraphs separated by blank lines), stripped."""


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, trailing spaces removed from every line, empty ones dropped."""
    out = []
    for para in _PARAGRAPH_BREAK.split(text):
        lines = [line.rstrip() for line in para.split("\n")]
        para = "\n".join(lines).strip("\n")
        if para.strip():
            out.append(para)
    return out


def topic_units() -> list[Unit]:
    """The sections of every ``pydoc`` topic, topics sorted by key, sections in page order."""
    from pydoc_data.topics import topics

    units = []
    for key in sorted(topics):
        text = topics[key].replace("\r\n", "\n")
        heads = list(_HEADING.finditer(text))
        if not heads:
            heads_spans = [(key, 0, len(text))]
        else:
            heads_spans = []
            if text[: heads[0].start()].strip():  # text before the first heading
                heads_spans.append((key, 0, heads[0].start()))
            for i, m in enumerate(heads):
                end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
                heads_spans.append((m.group("title").strip(), m.end(), end))
        for i, (title, start, end) in enumerate(heads_spans):
            body = "\n\n".join(paragraphs(text[start:end]))
            if body:
                units.append(Unit(f"topic:{key}#{i}", f"topic:{key}", "topic", title, body))
    return units


def module_source(module_name: str) -> str | None:
    """Path of a standard-library module's source file (``.py`` or package ``__init__.py``), or None."""
    base = os.path.join(sysconfig.get_paths()["stdlib"], *module_name.split("."))
    for path in (f"{base}.py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _own_docstrings(module_name: str, path: str) -> list[tuple[str, str, str]]:
    """``(qualified name, kind, docstring)`` of a module and of the public classes, functions and
    methods it defines at top level (in its source), sorted by name."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    out = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        out.append((module_name, "module", doc))
    defs = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    top = sorted((n for n in tree.body if isinstance(n, defs) and not n.name.startswith("_")), key=lambda n: n.name)
    for node in top:
        qual = f"{module_name}.{node.name}"
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append((qual, "class" if isinstance(node, ast.ClassDef) else "function", doc))
        if isinstance(node, ast.ClassDef):
            methods = (n for n in node.body if isinstance(n, defs[1:]) and not n.name.startswith("_"))
            for m in sorted(methods, key=lambda n: n.name):
                doc = ast.get_docstring(m, clean=True)
                if doc:
                    out.append((f"{qual}.{m.name}", "method", doc))
    return out


def docstring_units(modules: tuple[str, ...] = DOCSTRING_MODULES) -> list[Unit]:
    """One unit per distinct docstring of ``modules`` (sorted by module, then name); read from source."""
    seen: set[str] = set()
    units = []
    for module_name in sorted(modules):
        path = module_source(module_name)
        if path is None:
            continue
        for qualname, kind, doc in _own_docstrings(module_name, path):
            text = "\n\n".join(paragraphs(doc))
            if not text or text in seen:
                continue
            seen.add(text)
            units.append(Unit(f"doc:{qualname}", f"module:{module_name}", kind, qualname, text))
    return units


def all_units() -> list[Unit]:
    """Topic sections first, then docstrings; a fixed order."""
    return topic_units() + docstring_units()
