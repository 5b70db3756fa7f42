"""Rank and correlation statistics in numpy, the one copy: the scorer's validation metrics, the
annotation's health check and report (Spearman against length / own loss), the pipeline's AUCs.

Spearman is Pearson on ranks, ties sharing their average rank (scipy's ``rankdata``
"average" method); scipy is a test-only dependency, so ranks are computed here.
A constant vector has no correlation: :func:`pearson` / :func:`spearman` give 0.0 (not NaN), so
"best epoch" comparisons stay well defined; :func:`spearman_or_nan` is the reporting form.
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


def spearman_or_nan(x, y) -> float:
    """Spearman over the pairs where both are finite; NaN when fewer than 2 remain or either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return spearman(x, y)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (bool) labels; ties count 1/2.

    Equals the probability that a random positive outscores a random negative (the
    Mann-Whitney U statistic over ``n_pos * n_neg``). NaN when a class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = rankdata(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
