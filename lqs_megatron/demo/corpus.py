"""The demo corpus: Python's own documentation, cut into documents, with degraded copies mixed in.

:func:`build_demo_corpus` writes, deterministically and without any download, from
:mod:`lqs_megatron.demo.sources` (``pydoc`` topics and stdlib docstrings):

- ``corpus.jsonl``: one document per line, ``{"id", "text", "label", "kind", "source"}``
  and, for a degraded copy, ``"of"`` (the ``id`` of its clean source document).
  ``label`` is ``"clean"`` or ``"degraded"``; ``kind`` is ``"clean"`` or the
  degradation (``shuffled``, ``junk``, ``boilerplate``, ``spam``: see
  :mod:`lqs_megatron.demo.degrade`); ``source`` the topic or module it comes from.
  Clean documents are runs of consecutive paragraphs of one topic or one module's
  docstrings (each unit's heading, a section title or a qualified name, kept before
  its first paragraph), with lengths drawn log-uniformly in ``[min_chars, max_chars]``
  characters. About ``degraded_fraction`` of all documents are degraded copies of
  distinct clean documents (the kinds in equal shares); the clean source stays in the
  corpus too. The line order is a seeded shuffle, so labels are not clustered.
- ``labels.npy``: int8, one per line of ``corpus.jsonl``: 1 clean, 0 degraded (the
  positive class of "a good score finds clean text").
- ``target.jsonl``: LIMA-style ``{"id", "conversations": [question, answer], "source"}``
  with ``num_target`` explanatory answers (``"Explain assignment statements in
  Python."`` -> the section's text, ``"What does json.dumps() do in Python?"`` -> its
  docstring), up to ``max_answer_chars`` at a paragraph boundary. The target units
  are **held out**: they are left out of the corpus, and so is every paragraph of
  theirs that other units repeat (the docs share some paragraphs), so a selection
  cannot win by finding copies of the target, only text like it.
- ``manifest.json`` (written last, the completion marker): counts, sizes, parameters
  and the Python version.

Same ``seed`` and parameters on the same Python release: byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lqs_megatron.demo.degrade import DEGRADATIONS
from lqs_megatron.demo.sources import Unit, all_units
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file, save_json, save_npy

logger = logging.getLogger(__name__)

MIN_TARGET_CHARS = 300
"""A unit is a target candidate when its text has at least this many characters ..."""
MAX_CODE_FRACTION = 0.4
"""... and at most this fraction of its lines are code (``>>>`` prompts or indented blocks)."""


def _is_explanatory(unit: Unit) -> bool:
    if len(unit.text) < MIN_TARGET_CHARS:
        return False
    lines = [line for line in unit.text.split("\n") if line.strip()]
    code = sum(1 for line in lines if line.startswith((">>>", "...", "   ", "\t")))
    return code <= MAX_CODE_FRACTION * len(lines)


def question(unit: Unit) -> str:
    """The user turn asking for ``unit``'s explanation."""
    name = unit.name
    if unit.kind == "topic":
        if len(name) > 1 and name[0].isupper() and name[1].islower():
            name = name[0].lower() + name[1:]
        return f"Explain {name} in Python."
    if unit.kind == "module":
        return f"What is the {name} module in Python for?"
    if unit.kind == "class":
        return f"Explain the {name} class in Python."
    return f"What does {name}() do in Python?"


def _leading_paragraphs(text: str, max_chars: int) -> str:
    """The first paragraphs of ``text`` that fit in ``max_chars`` (always at least one)."""
    paras = text.split("\n\n")
    out, size = [paras[0]], len(paras[0])
    for p in paras[1:]:
        if size + 2 + len(p) > max_chars:
            break
        out.append(p)
        size += 2 + len(p)
    return "\n\n".join(out)


HELD_OUT_INSIDE = 100
"""A held-out paragraph at least this long is also held out where it is only part of another paragraph
(one docstring quoting another: the Python build's own docstrings decide where that happens)."""


def _blocks(units: Iterable[Unit], held_out: set[str]) -> list[str]:
    """A stream's paragraphs, less those in ``held_out`` or holding a long one; each unit's heading joined to
    its first paragraph (a heading never ends a document)."""
    inside = [h for h in held_out if len(h) >= HELD_OUT_INSIDE]
    out = []
    for unit in units:
        paras = [p for p in unit.text.split("\n\n") if p not in held_out and not any(h in p for h in inside)]
        if paras:
            out.append(f"{unit.name}\n\n{paras[0]}")
            out.extend(paras[1:])
    return out


def _documents(blocks: list[str], rng: random.Random, min_chars: int, max_chars: int) -> list[str]:
    """Cut a stream of paragraphs into documents of log-uniform target lengths."""

    def draw() -> float:
        return math.exp(rng.uniform(math.log(min_chars), math.log(max_chars)))

    docs, cur, size, target = [], [], 0, draw()
    for block in blocks:
        cur.append(block)
        size += len(block) + 2
        if size >= target:
            docs.append("\n\n".join(cur))
            cur, size, target = [], 0, draw()
    if cur:
        if docs and size < min_chars:
            docs[-1] = docs[-1] + "\n\n" + "\n\n".join(cur)
        else:
            docs.append("\n\n".join(cur))
    return [d.strip() for d in docs if d.strip()]


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")


def build_demo_corpus(
    out_dir: str | os.PathLike,
    seed: int = 0,
    degraded_fraction: float = 0.35,
    num_target: int = 160,
    min_chars: int = 100,
    max_chars: int = 1200,
    max_answer_chars: int = 1200,
) -> dict:
    """Build the demo corpus in ``out_dir`` (see the module docstring); returns the manifest.

    The returned manifest holds ``paths`` (``corpus``, ``labels``, ``target``, ``manifest``:
    full paths) and ``counts`` (documents per kind, ``clean``, ``degraded``, ``total``,
    ``target``); ``out_dir/manifest.json`` is the same with ``files`` (names) instead of ``paths``.
    """
    if not 0.0 <= degraded_fraction <= 0.5:
        raise LQSError(f"degraded_fraction must be in [0, 0.5] (one copy per clean document), got {degraded_fraction}")
    if not 1 <= min_chars < max_chars:
        raise LQSError(f"need 1 <= min_chars < max_chars, got {min_chars}, {max_chars}")
    rng = random.Random(seed)
    units = all_units()

    candidates = [u for u in units if _is_explanatory(u)]
    if not 0 <= num_target <= len(candidates):
        raise LQSError(f"num_target must be in [0, {len(candidates)}] (explanatory units available), got {num_target}")
    targets = rng.sample(candidates, num_target)
    target_uids = {u.uid for u in targets}
    held_out = {p for u in targets for p in u.text.split("\n\n")}  # also where other units repeat them

    streams: dict[str, list[Unit]] = {}
    for u in units:
        if u.uid not in target_uids:
            streams.setdefault(u.group, []).append(u)
    clean: list[tuple[str, str]] = []  # (text, source)
    for group, members in streams.items():
        clean.extend((doc, group) for doc in _documents(_blocks(members, held_out), rng, min_chars, max_chars))

    n_clean = len(clean)
    n_degraded = round(n_clean * degraded_fraction / (1.0 - degraded_fraction))
    kinds = list(DEGRADATIONS)
    picks = rng.sample(range(n_clean), n_degraded)
    assigned = [kinds[i % len(kinds)] for i in range(n_degraded)]
    rng.shuffle(assigned)
    records = [{"text": text, "label": "clean", "kind": "clean", "source": src} for text, src in clean]
    for src_idx, kind in zip(picks, assigned):
        text, src = clean[src_idx]
        records.append(
            {"text": DEGRADATIONS[kind](text, rng), "label": "degraded", "kind": kind, "source": src, "of": src_idx}
        )

    order = list(range(len(records)))
    rng.shuffle(order)
    new_id = {old: f"d{new:05d}" for new, old in enumerate(order)}
    rows = []
    for old in order:
        r = records[old]
        row = {"id": new_id[old], "text": r["text"], "label": r["label"], "kind": r["kind"], "source": r["source"]}
        if "of" in r:
            row["of"] = new_id[r["of"]]
        rows.append(row)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "corpus": str(out / "corpus.jsonl"),
        "labels": str(out / "labels.npy"),
        "target": str(out / "target.jsonl"),
        "manifest": str(out / "manifest.json"),
    }
    if os.path.exists(paths["manifest"]):
        os.unlink(paths["manifest"])  # an old manifest must not vouch for new, unfinished files
    _write_jsonl(Path(paths["corpus"]), rows)
    save_npy(paths["labels"], np.array([r["label"] == "clean" for r in rows], dtype=np.int8))
    _write_jsonl(
        Path(paths["target"]),
        (
            {
                "id": f"t{i:04d}",
                "conversations": [question(u), _leading_paragraphs(u.text, max_answer_chars)],
                "source": u.uid,
            }
            for i, u in enumerate(targets)
        ),
    )
    counts = {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ["clean", *kinds]}
    counts.update(clean=n_clean, degraded=n_degraded, total=len(rows), target=num_target)
    manifest = {
        "files": {k: os.path.basename(v) for k, v in paths.items()},
        "counts": counts,
        "chars": {"corpus": sum(len(r["text"]) for r in rows), "clean": sum(len(t) for t, _ in clean)},
        "params": {
            "seed": seed,
            "degraded_fraction": degraded_fraction,
            "num_target": num_target,
            "min_chars": min_chars,
            "max_chars": max_chars,
            "max_answer_chars": max_answer_chars,
        },
        "python": platform.python_version(),
        "labels": "labels.npy: int8 per corpus.jsonl line, 1 = clean, 0 = degraded",
    }
    save_json(paths["manifest"], manifest)  # file names only: the same bytes wherever it is built
    manifest["paths"] = paths
    logger.info(
        "demo corpus: %d documents (%d clean, %d degraded), %d target conversations -> %s",
        len(rows),
        n_clean,
        n_degraded,
        num_target,
        out,
    )
    return manifest
