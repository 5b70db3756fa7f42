"""The metadata sidecar ``PREFIX.meta.jsonl``: where each sequence of a dataset came from.

``lqs tokenize --keep-fields source,url`` keeps chosen fields of the input records beside
the tokens: line ``i`` of ``PREFIX.meta.jsonl`` is one JSON object describing sequence
``i`` of the indexed dataset ``PREFIX`` (in ``chunk`` mode every chunk of a document
carries that document's fields). A record that lacks a kept field gets ``null`` for it.

Why jsonl and not parquet: every tool opens it (``head``, ``jq``, pandas, pyarrow),
it streams in both directions without a dependency, and the fields are small (a source
name, a URL). The sidecar travels with the sequences: every writer that gathers
sequences (``sample-proxy``, ``select``, ``order`` through
:func:`lqs_megatron.data.datasets.subset.write_subset_with_sidecars`, ``merge``, sharded runs)
gathers the same lines with :func:`subset_meta` / :func:`concat_meta`, so a selected
or ordered dataset keeps its provenance.

Lines are stored exactly as written (compact JSON, keys in ``--keep-fields`` order), so
gathering copies bytes and a subset's sidecar is byte-identical whichever command built it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import numpy as np

from lqs_megatron.errors import InputError, LQSError
from lqs_megatron.utils.atomic import atomic_file

META_SUFFIX = ".meta.jsonl"


def meta_path(prefix: str | os.PathLike) -> str:
    """``PREFIX.meta.jsonl``."""
    return f"{prefix}{META_SUFFIX}"


def has_meta(prefix: str | os.PathLike) -> bool:
    """True when ``PREFIX.meta.jsonl`` exists."""
    return os.path.exists(meta_path(prefix))


def meta_line(record: dict, fields: Iterable[str]) -> bytes:
    """The sidecar line (with its newline) for ``record``: ``fields`` in order, ``null`` where missing.

    Values JSON cannot hold (a parquet timestamp, bytes) are written as their ``str()``.
    """
    obj = {f: record.get(f) for f in fields}
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


def write_meta(prefix: str | os.PathLike, lines: Iterable[bytes | dict]) -> int:
    """Write ``PREFIX.meta.jsonl`` atomically from encoded lines (or dicts); return the number of lines."""
    n = 0
    with atomic_file(meta_path(prefix)) as tmp, open(tmp, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = meta_line(line, line.keys())
            f.write(line)
            n += 1
    return n


def iter_meta(prefix: str | os.PathLike) -> Iterator[dict]:
    """The sidecar's objects in dataset order; :class:`InputError` with ``file:line`` on a bad line."""
    path = meta_path(prefix)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(f"invalid JSON ({e})", path=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
            yield obj


def read_meta(prefix: str | os.PathLike, expected: int | None = None) -> list[dict] | None:
    """All objects of ``PREFIX.meta.jsonl`` (``None`` without a sidecar); checks the count against ``expected``."""
    if not has_meta(prefix):
        return None
    rows = list(iter_meta(prefix))
    if expected is not None and len(rows) != expected:
        raise LQSError(
            f"{meta_path(prefix)} has {len(rows)} lines but the dataset has {expected} sequences; "
            "the sidecar belongs to another run: rebuild it with `lqs tokenize --keep-fields ...`"
        )
    return rows


def group_labels(prefix: str | os.PathLike, n: int, by: str | None) -> list[str] | None:
    """Field ``by`` of every record of ``prefix``'s sidecar as a group label (``"(none)"`` where missing);
    None for ``by=None``. :class:`LQSError` naming the sidecar when it is absent or lacks the field."""
    if by is None:
        return None
    from lqs_megatron.data.datasets.view import dataset_meta, is_view  # view builds on this module

    if is_view(prefix):  # a view's records are its source's, gathered by its indices
        records = dataset_meta(prefix)
        rows = None if records is None else list(records)
    else:
        rows = read_meta(prefix, expected=n)
    if rows is None:
        raise LQSError(
            f"--by {by}: {prefix} has no sidecar {meta_path(prefix)} (tokenize with `lqs tokenize --keep-fields {by}`)"
        )
    if rows and not any(by in r for r in rows):
        fields = sorted({k for r in rows[:1000] for k in r})
        raise LQSError(f"--by {by}: no record of {meta_path(prefix)} has that field (fields: {', '.join(fields)})")
    return ["(none)" if r.get(by) is None else str(r.get(by)) for r in rows]


def _line_offsets(path: str) -> np.ndarray:
    """Byte offset of every line start plus the file size (``n + 1`` int64 values)."""
    size = os.path.getsize(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n")) + 1
    if size and (len(ends) == 0 or ends[-1] != size):
        raise InputError("the last line has no newline (a truncated sidecar?)", path=path)
    return np.concatenate([[0], ends]).astype(np.int64)


def subset_meta(src_prefix: str | os.PathLike, indices, out_prefix: str | os.PathLike, n_src: int) -> bool:
    """Write ``out_prefix.meta.jsonl`` with line ``indices[j]`` of the source's sidecar as line ``j``.

    Does nothing and returns False when the source has no sidecar. ``n_src`` is the source
    dataset's sequence count: a sidecar of another length is an error, never a silent misalignment.
    """
    if not has_meta(src_prefix):
        return False
    write_meta(out_prefix, meta_lines(src_prefix, indices, n_src))
    return True


def meta_lines(src_prefix: str | os.PathLike, indices, n_src: int) -> Iterator[bytes]:
    """Lines ``indices[0], indices[1], ...`` of ``src_prefix``'s sidecar (bytes, with their newline); its line count
    is checked against ``n_src`` (the dataset's sequence count) before the first line is yielded."""
    path = meta_path(src_prefix)
    offsets = _line_offsets(path)
    if len(offsets) - 1 != n_src:
        raise LQSError(f"{path} has {len(offsets) - 1} lines but the dataset has {n_src} sequences")
    idx = np.asarray(indices, dtype=np.int64)
    data = np.memmap(path, dtype=np.uint8, mode="r") if offsets[-1] else np.zeros(0, dtype=np.uint8)
    return (data[offsets[i] : offsets[i + 1]].tobytes() for i in idx.tolist())


def concat_meta(
    src_prefixes: list[str], counts: list[int], out_prefix: str | os.PathLike, picks: list | None = None
) -> bool:
    """Write ``out_prefix.meta.jsonl`` as the sources' sidecars one after another (a merge, in order).

    All sources must have a sidecar, or none (then nothing is written and False returned);
    each sidecar's line count must equal its dataset's ``counts[k]``. ``picks[k]`` (when given and not None):
    only those lines of source ``k``, in that order (a view of the dataset ``src_prefixes[k]``).
    """
    picks = picks if picks is not None else [None] * len(src_prefixes)
    present = [has_meta(p) for p in src_prefixes]
    if not any(present):
        return False
    if not all(present):
        missing = [p for p, ok in zip(src_prefixes, present) if not ok]
        raise LQSError(f"some inputs have a {META_SUFFIX} sidecar and {', '.join(missing)} has none; keep all or none")

    def lines() -> Iterator[bytes]:
        for prefix, count, pick in zip(src_prefixes, counts, picks):
            if pick is not None:
                yield from meta_lines(prefix, pick, count)
                continue
            n = 0
            with open(meta_path(prefix), "rb") as f:
                for line in f:
                    n += 1
                    yield line
            if n != count:
                raise LQSError(f"{meta_path(prefix)} has {n} lines but the dataset has {count} sequences")

    write_meta(out_prefix, lines())
    return True
