"""Validation metrics of the scorer: MSE, Pearson and Spearman correlation, in numpy.

Spearman is Pearson on ranks, ties sharing their average rank (scipy's ``rankdata``
"average" method); scipy is a test-only dependency, so ranks are computed here.
A constant vector has no correlation: the result is 0.0 (not NaN), so "best epoch"
comparisons stay well defined.
"""

from __future__ import annotations

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (float64), ties sharing the average of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sx = x[order]
    # start of each run of equal values, and the average rank of that run
    starts = np.r_[0, np.flatnonzero(sx[1:] != sx[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a), rankdata(b))


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``{"mse", "pearson", "spearman"}`` of predictions against targets."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    return {
        "mse": float(np.mean((pred - target) ** 2)),
        "pearson": pearson(pred, target),
        "spearman": spearman(pred, target),
    }
