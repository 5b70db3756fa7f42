"""Apply a selection or an ordering to data: an indexed dataset, or a scored jsonl file.

Both take ``choose(scores) -> positions`` (a selection's sorted indices or an
ordering's permutation, see :mod:`~lqs_megatron.curate.selection` and
:mod:`~lqs_megatron.curate.ordering`) and write, for output position ``j``, input
record ``positions[j]``:

- **Indexed dataset** (``--data PREFIX``, a dataset or a view): ``OUT.bin/.idx`` (each kept sequence its own
  document; the trainer reads it directly), ``OUT.scores.npy`` (the kept sequences'
  scores in output order, in the score file's dtype) and ``OUT.indices.npy`` (int64,
  their positions in the input). Scores come from a ``.npy`` with one finite score per
  sequence. With ``view=True`` (``--view``) no tokens are copied: ``OUT.view.json`` and the same sidecars
  (:mod:`lqs_megatron.data.datasets.view`; a view's indices point into the original source).
- **jsonl** (``--data FILE.jsonl[.gz|.zst]``, output ``FILE.jsonl``), as DELT's tools:
  each input line is one record, its score the number in ``score_field``. The records
  are written unchanged (byte for byte) in the new order. With a score ``.npy`` instead,
  that array gives the scores (one per record) and each output record gets
  ``score_field`` set to its score. Sidecars as above, named from the output path
  without ``.jsonl`` (``out.jsonl`` -> ``out.scores.npy``, ``out.indices.npy``). The
  records are held in memory, as DELT's tools hold them; for corpus-scale data use
  indexed datasets.

Kill safety: an old output is removed first (``OUT.idx``, or the ``.jsonl``), the
sidecars are written next, and the main output (dataset ``.idx`` / the ``.jsonl``)
last, each atomically, so a complete-looking output always has sidecars of its run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable

import numpy as np

from lqs_megatron.data.datasets.scores import check_scores, json_floats, read_scores
from lqs_megatron.data.datasets.subset import sidecar_path, write_subset_with_sidecars
from lqs_megatron.data.datasets.view import open_dataset, view_path, write_view
from lqs_megatron.data.preprocess.jsonl import get_field, is_blank, iter_lines, parse_line
from lqs_megatron.errors import InputError, LQSError
from lqs_megatron.utils.atomic import atomic_file, save_npy

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd")

Chooser = Callable[[np.ndarray], np.ndarray]


def is_jsonl(path: str | os.PathLike) -> bool:
    """True when ``path`` names a jsonl file (by its extension) rather than a dataset prefix."""
    return str(path).endswith(JSONL_SUFFIXES)


def _summary(kind: str, out: str, n_in: int, positions: np.ndarray, out_scores: np.ndarray) -> dict:
    info = {
        "kind": kind,
        "out": out,
        "num_input": int(n_in),
        "num_output": int(len(positions)),
        "score_min": float(out_scores.min()) if len(out_scores) else None,
        "score_max": float(out_scores.max()) if len(out_scores) else None,
    }
    logger.info(
        "%d of %d %s written -> %s (scores %s..%s)",
        info["num_output"],
        n_in,
        "records" if kind == "jsonl" else "sequences",
        out,
        info["score_min"],
        info["score_max"],
    )
    return info


def curate_dataset(
    data_prefix: str | os.PathLike,
    scores_path: str | os.PathLike,
    out_prefix: str | os.PathLike,
    choose: Chooser,
    command: str = "select",
    view: bool = False,
) -> dict:
    """Apply ``choose`` to an indexed dataset (or a view) and its score file (see the module docstring);
    ``command`` (``select`` / ``order``) is recorded in ``OUT.stats.json`` with the input's tokenizer. ``view``:
    write a view (``OUT.view.json`` and the same sidecars, :mod:`lqs_megatron.data.datasets.view`) instead of
    ``OUT.bin/.idx``."""
    if is_jsonl(out_prefix):
        raise LQSError(
            f"--out {str(out_prefix)!r} is a jsonl file but --data is an indexed dataset; "
            "give an output prefix (or export the result with `lqs export-jsonl`)"
        )
    ds = open_dataset(data_prefix)
    raw = read_scores(scores_path)
    scores = check_scores(raw, len(ds), name=str(scores_path))
    positions = np.asarray(choose(scores), dtype=np.int64)
    out_scores = raw[positions]
    if view:
        write_view(ds, positions, out_prefix, out_scores, command)
    else:
        write_subset_with_sidecars(ds, positions, out_prefix, {"scores": out_scores, "indices": positions}, command)
    info = _summary("view" if view else "dataset", str(out_prefix), len(ds), positions, scores[positions])
    info.update(indices=sidecar_path(out_prefix, "indices"), scores=sidecar_path(out_prefix, "scores"))
    if view:
        info.update(view=view_path(out_prefix))
    return info


def _jsonl_base(out_path: str) -> str:
    if not out_path.endswith(".jsonl"):
        raise LQSError(f"--out {out_path!r}: jsonl input gives jsonl output; name it FILE.jsonl (uncompressed)")
    return out_path[: -len(".jsonl")]


def _read_records(path: str, score_field: str | None) -> tuple[list[bytes], list[tuple[str, int]], np.ndarray | None]:
    """Raw lines (without line ends), their ``(path, line)``, and the scores of ``score_field`` if asked."""
    lines: list[bytes] = []
    where: list[tuple[str, int]] = []
    scores: list[float] = []
    for p, line_no, raw in iter_lines(path):
        if is_blank(raw):
            continue
        obj = parse_line(raw, p, line_no)
        if not isinstance(obj, dict):
            raise InputError("expected one JSON object (a record) per line", p, line_no)
        if score_field is not None:
            value = get_field(obj, score_field, p, line_no)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"field {score_field!r} must be a number, got {json.dumps(value)[:40]}", p, line_no)
            if not math.isfinite(value):
                raise InputError(f"field {score_field!r} is {value}; scores must be finite numbers", p, line_no)
            scores.append(float(value))
        lines.append(raw.rstrip(b"\r\n"))
        where.append((p, line_no))
    return lines, where, (np.asarray(scores, dtype=np.float64) if score_field is not None else None)


def curate_jsonl(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    choose: Chooser,
    scores_path: str | os.PathLike | None = None,
    score_field: str = "score",
) -> dict:
    """Apply ``choose`` to the records of a jsonl file (see the module docstring)."""
    in_path, out_path = str(in_path), str(out_path)
    base = _jsonl_base(out_path)  # --out equal to an input is refused by the output rule (utils/lock.py)
    if not os.path.isfile(in_path):
        raise LQSError(f"--data {in_path!r} does not exist")
    lines, where, field_scores = _read_records(in_path, None if scores_path is not None else score_field)
    if scores_path is not None:
        raw = read_scores(scores_path)
        scores = check_scores(raw, len(lines), name=str(scores_path))
    else:
        raw = scores = field_scores
    positions = np.asarray(choose(scores), dtype=np.int64)
    if os.path.exists(out_path):
        os.unlink(out_path)
    save_npy(f"{base}.scores.npy", raw[positions])
    save_npy(f"{base}.indices.npy", positions)
    new_scores = json_floats(raw[positions]) if scores_path is not None else None
    with atomic_file(out_path) as tmp, open(tmp, "wb") as f:
        for out_pos, j in enumerate(positions.tolist()):
            if new_scores is None:
                f.write(lines[j])
            else:
                obj = parse_line(lines[j], *where[j])
                obj[score_field] = new_scores[out_pos]
                f.write(json.dumps(obj, ensure_ascii=False).encode("utf-8"))
            f.write(b"\n")
    info = _summary("jsonl", out_path, len(lines), positions, scores[positions])
    info.update(indices=f"{base}.indices.npy", scores=f"{base}.scores.npy")
    return info
