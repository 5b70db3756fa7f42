"""Selection methods against plain-Python implementations of their definitions (docs/curation.md)."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from lqs_megatron.curate.selection import SELECTIONS, select, select_threshold, select_top_k, select_top_r, top_r_count
from lqs_megatron.errors import LQSError


def ref_top_k(scores: list[float], k: int) -> list[int]:
    """The k highest scores; equal scores: the lower index first; kept positions in input order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def ref_top_r(scores: list[float], r: float) -> list[int]:
    return ref_top_k(scores, math.floor(Decimal(repr(r)) * len(scores)))


def ref_threshold(scores: list[float], t: float) -> list[int]:
    return [i for i, s in enumerate(scores) if s >= t]


def random_scores(rng: np.random.Generator, n: int, ties: bool) -> np.ndarray:
    if ties:  # few distinct values: many ties, also at the cut
        return rng.integers(-3, 4, size=n).astype(np.float64) / 2
    return rng.standard_normal(n) * rng.uniform(0.1, 10)


@pytest.mark.parametrize("ties", [False, True])
def test_against_reference_on_random_scores(ties):
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(0, 40)) if trial else 0
        s = random_scores(rng, n, ties)
        lst = s.tolist()
        for r in (0.0, 1.0, float(rng.uniform()), round(float(rng.uniform()), 2)):
            got = select_top_r(s, r)
            assert got.dtype == np.int64
            assert got.tolist() == ref_top_r(lst, r), (lst, r)
        for k in sorted({0, n, int(rng.integers(0, n + 1))}):
            assert select_top_k(s, k).tolist() == ref_top_k(lst, k), (lst, k)
        for t in (float(rng.standard_normal()), float(s[0]) if n else 0.0, -math.inf, math.inf):
            assert select_threshold(s, t).tolist() == ref_threshold(lst, t), (lst, t)


def test_edges_and_rounding():
    s = np.array([0.5, 0.1, 0.9, 0.3])
    assert select_top_r(s, 0).tolist() == []
    assert select_top_r(s, 1).tolist() == [0, 1, 2, 3]
    assert select_top_r(s, 0.5).tolist() == [0, 2]  # kept in input order
    assert select_top_r(s, 0.74).tolist() == [0, 2]  # floor(2.96) = 2
    assert select_top_k(s, 0).tolist() == [] and select_top_k(s, 4).tolist() == [0, 1, 2, 3]
    assert select_threshold(s, 0.5).tolist() == [0, 2]  # >=: the equal score is kept
    # r * N on the decimal r: 0.29 * 100 = 29 (float arithmetic gives 28.999999999999996)
    assert 0.29 * 100 < 29 and top_r_count(100, 0.29) == 29
    assert top_r_count(3, 0.5) == 1 and top_r_count(0, 0.7) == 0
    # a tie at the cut goes to the lower index
    assert select_top_k(np.array([1.0, 2.0, 1.0, 1.0]), 2).tolist() == [0, 1]
    assert select_top_k(np.array([3, 1, 3, 3], dtype=np.int32), 2).tolist() == [0, 2]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: select_top_r(s, -0.1), r"--r must be in \[0, 1\]"),
        (lambda s: select_top_r(s, 1.01), r"--r must be in \[0, 1\]"),
        (lambda s: select_top_r(s, float("nan")), r"--r must be in \[0, 1\]"),
        (lambda s: select_top_k(s, -1), r"--k must be in \[0, 3\]"),
        (lambda s: select_top_k(s, 4), r"--k must be in \[0, 3\]"),
        (lambda s: select_top_k(s, 1.5), "--k must be an integer"),
        (lambda s: select_threshold(s, float("nan")), "--threshold must be a number"),
        (lambda s: select(s, "best"), "unknown selection method"),
        (lambda s: select_top_k(np.array([1.0, np.nan, 2.0]), 1), r"not finite \(first at index 1"),
        (lambda s: select_top_k(np.array([1.0, np.inf, 2.0]), 1), "not finite"),
        (lambda s: select_top_k(np.ones((3, 1)), 1), "1-D"),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(LQSError, match=match):
        call(np.array([0.1, 0.2, 0.3]))


def test_registry_dispatch():
    s = np.random.default_rng(0).standard_normal(17)
    assert select(s, "top-r", r=0.3).tolist() == select_top_r(s, 0.3).tolist()
    assert select(s, "top-k", k=4).tolist() == select_top_k(s, 4).tolist()
    assert select(s, "threshold", threshold=0.0).tolist() == select_threshold(s, 0.0).tolist()
    assert set(SELECTIONS) == {"top-r", "top-k", "threshold"}
