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
    """The array stored in a ``.npy`` score file, as stored (no checks beyond readability)."""
    path = str(path)
    if not os.path.isfile(path):
        raise LQSError(f"score file {path!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LQSError(f"{path}: not a readable .npy array ({e})") from None


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
