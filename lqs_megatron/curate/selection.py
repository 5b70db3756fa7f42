"""Data selection: which sequences to keep, from one score per sequence (higher is better).

Every method returns the kept positions as an int64 array **sorted ascending**: a
selection keeps the input order of what it keeps, so a selection followed by an
ordering (or any other step) composes without surprises. (DELT's jsonl tools instead
emit the kept records sorted by score; ``lqs order --method sorting`` gives that.)

- ``top-k``: the ``k`` highest scores, ``0 <= k <= N``.
- ``top-r``: the ``k = floor(r * N)`` highest scores, ``0 <= r <= 1``, as DELT's
  ``top_r`` (``int(len(data) * r)``). The product is taken on the decimal ``r`` as
  written (``0.29 * 100`` keeps 29, where float arithmetic would give 28.999...).
  ``r = 0`` keeps nothing, ``r = 1`` keeps everything.
- ``threshold``: every score ``>= threshold`` (DELT's tool uses ``>``; with real-valued
  scores the two differ only on exact equality, and ``>=`` lets a user write the
  threshold of a known score and keep that sequence).

Ties: where the k-th and (k+1)-th highest scores are equal, the sequence with the lower
index is kept (a stable sort on the score, descending). Scores must be finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from types import MappingProxyType

import numpy as np

from lqs_megatron.data.datasets.scores import check_scores
from lqs_megatron.errors import LQSError


def check_r(r: float, name: str = "r") -> float:
    """``--name`` (default ``--r``) as a float; :class:`LQSError` unless ``0 <= r <= 1``."""
    r = float(r)
    if not math.isfinite(r) or not 0.0 <= r <= 1.0:
        raise LQSError(f"--{name} must be in [0, 1], got {r}")
    return r


def check_k(k) -> int:
    """--k as an int; :class:`LQSError` unless an integer >= 0 (its upper bound is the data's size)."""
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise LQSError(f"--k must be an integer >= 0, got {k!r}")
    return int(k)


def check_threshold(threshold: float) -> float:
    """--threshold as a float; :class:`LQSError` for NaN."""
    threshold = float(threshold)
    if math.isnan(threshold):
        raise LQSError("--threshold must be a number, got nan")
    return threshold


PARAM_CHECKS: Mapping[str, Callable] = MappingProxyType(
    {"top-r": check_r, "top-k": check_k, "threshold": check_threshold}
)
"""Method -> the check of its parameter that needs no data (``SelectConfig`` and the functions below run it)."""


def top_r_count(n: int, r: float, name: str = "r") -> int:
    """``floor(r * n)`` on the decimal ``r`` as written; :class:`LQSError` naming ``--name`` unless ``0 <= r <= 1``."""
    return math.floor(Fraction(repr(check_r(r, name))) * n)


def _highest(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, ties to the lower index, returned sorted ascending."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    by_score = np.argsort(-scores, kind="stable")  # descending score; equal scores keep index order
    return np.sort(by_score[:k]).astype(np.int64)


def select_top_k(scores, k: int) -> np.ndarray:
    """The ``k`` highest-scoring positions (see the module docstring)."""
    s = check_scores(scores)
    if isinstance(k, bool) or int(k) != k:
        check_k(k)  # not an integer: its error
    k = int(k)
    if not 0 <= k <= len(s):
        raise LQSError(f"--k must be in [0, {len(s)}] (the number of sequences), got {k}")
    return _highest(s, k)


def select_top_r(scores, r: float) -> np.ndarray:
    """The ``floor(r * N)`` highest-scoring positions (see the module docstring)."""
    s = check_scores(scores)
    return _highest(s, top_r_count(len(s), r))


def select_threshold(scores, threshold: float) -> np.ndarray:
    """Every position whose score is ``>= threshold``, ascending."""
    s = check_scores(scores)
    threshold = check_threshold(threshold)
    return np.flatnonzero(s >= threshold).astype(np.int64)


SELECTIONS: Mapping[str, Callable[..., np.ndarray]] = MappingProxyType(
    {"top-r": select_top_r, "top-k": select_top_k, "threshold": select_threshold}
)
"""Method name (as ``lqs select --method`` spells it) -> ``fn(scores, **params) -> sorted indices``."""


def select(scores, method: str, **params) -> np.ndarray:
    """Run selection ``method`` (a key of :data:`SELECTIONS`) with its parameters."""
    if method not in SELECTIONS:
        raise LQSError(f"unknown selection method {method!r} (choose from {', '.join(SELECTIONS)})")
    return SELECTIONS[method](scores, **params)
