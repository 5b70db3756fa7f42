"""Orderings against plain-Python implementations of their definitions (docs/curation.md)."""

from __future__ import annotations

import numpy as np
import pytest

from lqs_megatron.curate.ordering import ORDERINGS, folding, order, saw, shuffle, sorting, stair, zigzag
from lqs_megatron.errors import LQSError


def ref_sorted(scores: list[float], descending: bool = False) -> list[int]:
    """Positions by score; Python's sort is stable, so equal scores stay in index order."""
    return sorted(range(len(scores)), key=lambda i: scores[i], reverse=descending)


def ref_passes(sorted_list: list[int], layers: int, reverse_odd: bool) -> list[int]:
    out = []
    for l in range(layers):
        one_pass = [sorted_list[i] for i in range(len(sorted_list)) if i % layers == l]
        if reverse_odd and l % 2 == 1:
            one_pass.reverse()
        out.extend(one_pass)
    return out


def ref_delt_folding(scores: list[float], layers: int) -> list[int]:
    """DELT's data_ordering/folding.py on records {"score", "i"}, written out as the paper describes it."""
    records = [{"score": s, "i": i} for i, s in enumerate(scores)]
    ranked = sorted(records, key=lambda x: x["score"])
    out = []
    for l in range(layers):
        out.extend(ranked[i] for i in range(len(ranked)) if i % layers == l)
    return [r["i"] for r in out]


def ref_transitions(scores, layers, sections, ratio, descending, reverse_odd) -> list[int]:
    s = ref_sorted(scores, descending)
    n = len(s)
    if n == 0 or sections == 1 or ratio == 0:
        return s
    radius = round(n * ratio)
    out, cursor = [], 0
    for sec in range(1, sections):
        split = round(n * sec / sections)
        start = max(cursor, split - radius)
        end = min(n, split + radius)
        out.extend(s[cursor:start])
        out.extend(ref_passes(s[start:end], layers, reverse_odd))
        cursor = end
    out.extend(s[cursor:])
    return out


def random_scores(rng, n, ties):
    return (rng.integers(0, 4, size=n) / 4.0) if ties else rng.standard_normal(n)


@pytest.mark.parametrize("ties", [False, True])
def test_against_reference_on_random_scores(ties):
    rng = np.random.default_rng(11)
    for trial in range(50):
        n = int(rng.integers(0, 45)) if trial else 0
        s = random_scores(rng, n, ties)
        lst = s.tolist()
        for desc in (False, True):
            assert sorting(s, descending=desc).tolist() == ref_sorted(lst, desc)
        for layers in (1, 2, 3, 5, n + 2):
            assert folding(s, layers=layers).tolist() == ref_passes(ref_sorted(lst), layers, False)
            assert folding(s, layers=layers).tolist() == ref_delt_folding(lst, layers)
            assert folding(s, layers, descending=True).tolist() == ref_passes(ref_sorted(lst, True), layers, False)
            assert zigzag(s, layers=layers).tolist() == ref_passes(ref_sorted(lst), layers, True)
        for sections, ratio, layers in ((2, 0.225, 3), (3, 0.075, 2), (4, 0.3, 2), (1, 0.2, 3), (3, 0.0, 2)):
            assert stair(s, layers, sections, ratio).tolist() == ref_transitions(
                lst, layers, sections, ratio, False, False
            )
            assert saw(s, layers, sections, ratio).tolist() == ref_transitions(
                lst, layers, sections, ratio, False, True
            )
        for name in ORDERINGS:
            perm = order(s, name)
            assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(n))


def test_folding_worked_example():
    # scores rise with the index: the sorted list is 0..8; 3 passes of every 3rd one
    s = np.linspace(0.1, 0.9, 9)
    assert folding(s, layers=3).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert zigzag(s, layers=3).tolist() == [0, 3, 6, 7, 4, 1, 2, 5, 8]
    perm = folding(np.random.default_rng(3).standard_normal(100), layers=4)
    # within each pass the scores rise: higher scores come later in every pass
    scores = np.random.default_rng(3).standard_normal(100)[perm]
    for p in range(4):
        assert np.all(np.diff(scores[p * 25 : (p + 1) * 25]) >= 0)
    # ties: equal scores keep index order
    assert folding(np.array([1.0, 0.0, 1.0, 0.0, 1.0]), layers=2).tolist() == [1, 0, 4, 3, 2]


def test_stair_saw_worked_example():
    s = np.arange(10, dtype=float)  # sorted list = 0..9; one split at 5, radius round(10*0.2)=2: region [3, 7)
    assert stair(s, layers=2, sections=2, transition_ratio=0.2).tolist() == [0, 1, 2, 3, 5, 4, 6, 7, 8, 9]
    assert saw(s, layers=2, sections=2, transition_ratio=0.2).tolist() == [0, 1, 2, 3, 5, 6, 4, 7, 8, 9]


def test_shuffle_is_seeded_and_ignores_scores():
    s = np.random.default_rng(0).standard_normal(50)
    a, b, c = shuffle(s, seed=5), shuffle(s, seed=5), shuffle(s, seed=6)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert sorted(a.tolist()) == list(range(50))
    assert shuffle(-s, seed=5).tolist() == a.tolist()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: folding(s, layers=0), "--layers must be an integer >= 1"),
        (lambda s: stair(s, sections=0), "--sections must be an integer >= 1"),
        (lambda s: saw(s, transition_ratio=-0.1), "--transition-ratio must be >= 0"),
        (lambda s: shuffle(s, seed=-1), "--seed must be an integer >= 0"),
        (lambda s: order(s, "random"), "unknown ordering method"),
        (lambda s: folding(np.array([0.0, np.nan])), "not finite"),
        (lambda s: shuffle(np.array([0.0, np.nan])), "not finite"),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(LQSError, match=match):
        call(np.array([0.3, 0.1, 0.2]))
