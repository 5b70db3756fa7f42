"""The score update of one scoring step (``docs/algorithm.md``), in float64. The normalisation
is :func:`lqs_megatron.data.datasets.scores.normalize_scores`.

At a scoring step ``i`` (``i % K == 0``), for every proxy example with per-example gradient
``g`` at ``theta_i`` (given as ``dot = <g, lambda_{i+1}>`` and ``sq = |g|^2``)::

    cos   = dot / (|g| |lambda|), clamped to [-1, 1]; 0 where a norm is 0
    ratio = |g| / c        (lqs; c = 1 at the first scoring step met, a previous 0 counts as 1)
          = |g|            (pds: then the term is eta * <g, lambda>)
    s    += eta * |lambda| * ratio * cos
    c     = |g|
"""

from __future__ import annotations

import numpy as np

METHODS = ("lqs", "pds")


def score_update(
    s: np.ndarray, c: np.ndarray, dot: np.ndarray, sq: np.ndarray, lam_norm: float, lr: float, method: str
) -> np.ndarray:
    """Update ``s`` and ``c`` (float64 arrays of this rank's proxy examples) in place; return ``cos``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    g_norm = np.sqrt(np.maximum(sq, 0.0))
    denom = g_norm * lam_norm
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, np.clip(dot / np.where(denom > 0, denom, 1.0), -1.0, 1.0), 0.0)
    if method == "lqs":
        ratio = g_norm / np.where(c == 0, 1.0, c)
    else:
        ratio = g_norm
    s += lr * lam_norm * ratio * cos
    c[:] = g_norm
    return cos
