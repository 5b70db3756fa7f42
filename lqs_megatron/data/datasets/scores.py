"""Score files: one number per sequence, a 1-D ``.npy`` aligned with a dataset's order.

Every consumer of scores (``select``, ``order``, ``export-jsonl``) loads them here, so
the checks and messages are the same everywhere: the file must exist and hold a 1-D
real-valued array, its length must equal the dataset's number of sequences, and every
score must be finite (a NaN or an infinity is an error naming its first index, never
silently sorted somewhere).
"""

from __future__ import annotations

import os

import numpy as np

from lqs_megatron.errors import LQSError


def check_scores(scores, expected_len: int | None = None, name: str = "scores") -> np.ndarray:
    """Validate ``scores`` and return them as a 1-D float64 array (see the module docstring)."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise LQSError(f"{name}: expected a 1-D array of scores, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iuf":
        raise LQSError(f"{name}: expected real-valued scores, got dtype {arr.dtype}")
    if expected_len is not None and len(arr) != expected_len:
        raise LQSError(
            f"{name}: {len(arr)} scores for a dataset of {expected_len} sequences (one score per sequence is needed)"
        )
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise LQSError(
            f"{name}: {int(bad.sum())} score(s) are not finite (first at index {first}: {arr[first]}); "
            "scores must be finite numbers"
        )
    return arr


def read_scores(path: str | os.PathLike) -> np.ndarray:
    """The scores stored at ``path``, as stored (no checks beyond readability). ``path`` is one of:

    - a ``.npy`` file (1-D);
    - a ``lqs score`` output directory (its ``scores.npy``);
    - a ``.parquet`` file with a ``score`` column (``lqs score --parquet``, ``export-jsonl --format parquet``),
      rows in ``index`` order;
    - the ``--out`` of a sharded ``lqs score`` run that was not merged: its shards'
      ``OUT.shard-IIIII-of-NNNNN/scores.npy`` in order (every shard must be finished).
    """
    path = str(path).rstrip("/") or str(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "scores.npy")):
        return read_scores(os.path.join(path, "scores.npy"))
    if not os.path.exists(path):
        from lqs_megatron.data.preprocess.sharding import find_shard_outputs

        try:
            shards = find_shard_outputs(path, marker="/scores.npy")
        except LQSError as e:
            if "no shard outputs" in str(e):
                raise LQSError(f"score file {path!r} does not exist") from None
            raise
        return np.concatenate([read_scores(os.path.join(p, "scores.npy")) for p in shards])
    if not os.path.isfile(path):
        raise LQSError(f"{path!r} holds no scores (expected a .npy file, a score directory or a .parquet file)")
    with open(path, "rb") as f:
        parquet = f.read(4) == b"PAR1"
    if parquet:
        return _parquet_scores(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LQSError(f"{path}: not a readable .npy array ({e})") from None


def _parquet_scores(path: str) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise LQSError(f"{path}: not a readable parquet file ({e})") from None
    if "score" not in table.column_names:
        raise LQSError(f"{path}: no 'score' column (columns: {', '.join(table.column_names)})")
    if "index" in table.column_names:
        index = table.column("index").to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise LQSError(f"{path}: the 'index' column is not 0, 1, 2, ...: rows out of dataset order")
    return table.column("score").to_numpy()


def write_scores_parquet(path, scores: np.ndarray, data_prefix: str | os.PathLike, start: int = 0) -> None:
    """``path``: one row per sequence ``start + j`` of ``data_prefix``: ``index``, ``document`` (the index of
    the document holding it), ``score``, and the fields of ``PREFIX.meta.jsonl`` when the dataset has one.

    Written atomically, in row groups of 65,536 rows (memory stays bounded by one group).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lqs_megatron.data.datasets.meta import meta_path
    from lqs_megatron.data.datasets.view import dataset_meta, open_dataset
    from lqs_megatron.utils.atomic import atomic_file

    ds = open_dataset(data_prefix)
    scores = np.asarray(scores)
    stop = start + len(scores)
    if stop > len(ds):
        raise LQSError(f"{len(scores)} scores from sequence {start} run past the {len(ds)} sequences of {data_prefix}")
    index = np.arange(start, stop, dtype=np.int64)
    document = np.searchsorted(ds.document_indices[1:], index, side="right").astype(np.int64)
    meta = dataset_meta(ds)  # a view's: its source's records, gathered
    if meta is not None:
        for _ in range(start):
            next(meta)
    group = 1 << 16
    with atomic_file(path) as tmp:
        writer = None
        try:
            for lo in range(0, len(scores), group):
                hi = min(lo + group, len(scores))
                cols = {"index": index[lo:hi], "document": document[lo:hi], "score": scores[lo:hi]}
                if meta is not None:
                    rows = [next(meta) for _ in range(hi - lo)]
                    for key in rows[0] if rows else ():
                        cols.setdefault(key, [r.get(key) for r in rows])
                table = pa.table(cols)
                if writer is None:  # a field that is null throughout the first group: a string column
                    schema = pa.schema(
                        [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                    )
                    writer = pq.ParquetWriter(str(tmp), schema)
                try:
                    table = table.cast(writer.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise LQSError(f"{meta_path(data_prefix)}: a field changes type between rows ({e})") from None
                writer.write_table(table, row_group_size=group)
            if writer is None:
                writer = pq.ParquetWriter(
                    str(tmp), pa.table({"index": index, "document": document, "score": scores}).schema
                )
        finally:
            if writer is not None:
                writer.close()


def load_scores(path: str | os.PathLike, expected_len: int | None = None) -> np.ndarray:
    """Load a ``.npy`` score file and :func:`check_scores` it (the messages name ``path``)."""
    return check_scores(read_scores(path), expected_len, name=str(path))


def json_floats(scores: np.ndarray) -> list[float]:
    """Python floats for JSON: exact for float64, the shortest decimal that reads back as the same
    ``float32``/``float16`` for those (``0.3``, not ``0.30000001192092896``)."""
    scores = np.asarray(scores)
    if scores.dtype in (np.float32, np.float16):
        return [float(str(x)) for x in scores]
    return [float(x) for x in scores.astype(np.float64).tolist()]


CLIP = 3.0
"""Normalised scores are clipped to ``[-CLIP, CLIP]`` (``docs/algorithm.md``)."""


def normalize_scores(raw: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """``clip((s - mean(s)) / std(s), -clip, clip)`` in float64, with the population std.

    All zeros when the std is 0 (or not finite). The one definition used by ``lqs annotate``
    (``scores.npy``) and ``lqs prepare-scorer-data`` (the scorer's targets).
    """
    s = np.asarray(raw, dtype=np.float64)
    if s.size == 0:
        return s.copy()
    std = s.std()
    if std == 0 or not np.isfinite(std):
        return np.zeros_like(s)
    return np.clip((s - s.mean()) / std, -clip, clip)


FLAT_REL_STD = 1e-6
"""Scores whose std is at most this fraction of their mean magnitude differ by rounding noise only."""
FLAT_SHARE = 0.99
"""Scores of which this share or more hold one value are nearly constant."""


def flat_scores_message(where, reason: str) -> str:
    """The one sentence for scores :func:`flat_scores` flags (``reason``), read from ``where``."""
    return (
        f"{where}: the scores are {reason}: a scorer trained on them learns nothing (validation Pearson 0); "
        "check the annotation (its health report)"
    )


def flat_scores(raw: np.ndarray) -> str | None:
    """Why ``raw`` cannot teach a scorer anything, or ``None``: constant, or nearly so (a std of rounding noise,
    which normalisation would blow up to unit variance, or one value for at least :data:`FLAT_SHARE` of them)."""
    s = np.asarray(raw, dtype=np.float64)
    if s.size < 2:
        return None
    std, scale = float(s.std()), float(np.abs(s).mean())
    if std == 0:
        return f"constant (all {s[0]:g})"
    if std <= FLAT_REL_STD * scale:
        return f"nearly constant (std {std:.3g}, {std / scale:.1e} of their mean magnitude {scale:.3g}: rounding noise)"
    values, counts = np.unique(s, return_counts=True)
    if counts.max() >= FLAT_SHARE * s.size:
        return f"nearly constant ({int(counts.max())} of {s.size} are {values[counts.argmax()]:g})"
    return None
