"""Orderings against plain-Python implementations of their definitions (docs/curation.md)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lqs_megatron.curate.ordering import (
    ORDERINGS,
    folding,
    jittering,
    order,
    saw,
    segment,
    shuffle,
    sorting,
    stair,
    zigzag,
)
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


def ref_segment_sets(scores, front_ratio, back_ratio, front_from, back_from):
    """The docs' segment definition in plain Python: (front, middle, back) as sets, None where the split of a
    same-end block between front and back is random (then: the block's set)."""
    s = ref_sorted(list(scores))
    n = len(s)
    nf, nb = int(round(front_ratio * 1000)) * n // 1000, int(round(back_ratio * 1000)) * n // 1000

    def take(pool, k, end):
        return (pool[:k], pool[k:]) if end == "low" else (pool[len(pool) - k :], pool[: len(pool) - k])

    if front_from == back_from:
        block, middle = take(s, nf + nb, front_from)
        return nf, nb, set(block), set(middle)
    front, rest = take(s, nf, front_from)
    back, middle = take(rest, nb, back_from)
    return set(front), set(middle), set(back)


def test_segment_worked_example():
    # sorted list S (ascending): 7 1 5 3 9 0 8 4 6 2
    s = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.0, 0.6, 0.4])
    cases = [  # front_from, back_from -> front | middle | back, as sets (each segment is shuffled)
        ("low", "high", {7, 1}, {5, 3, 9, 0, 8}, {4, 6, 2}),  # front S[:2], back S[7:]
        ("high", "low", {6, 2}, {3, 9, 0, 8, 4}, {7, 1, 5}),  # front S[8:], back the lowest 3 of the rest
    ]
    for front_from, back_from, front, middle, back in cases:
        for seed in range(5):
            p = segment(s, 0.2, 0.3, front_from, back_from, seed).tolist()
            assert (set(p[:2]), set(p[2:7]), set(p[7:])) == (front, middle, back), (front_from, seed)
    # the same end: the 5 highest (0 8 4 6 2) shared at random, 2 in front, 3 at the back
    fronts = set()
    for seed in range(40):
        p = segment(s, 0.2, 0.3, "high", "high", seed).tolist()
        assert set(p[:2]) | set(p[7:]) == {0, 8, 4, 6, 2} and set(p[2:7]) == {7, 1, 5, 3, 9}
        fronts.add(frozenset(p[:2]))
    assert len(fronts) > 5  # the front is a random pair of the block, not a fixed one
    p = segment(s, 0.2, 0.3, "low", "low", 0).tolist()
    assert set(p[:2]) | set(p[7:]) == {7, 1, 5, 3, 9} and set(p[2:7]) == {0, 8, 4, 6, 2}
    # defaults: 10% lowest first, 10% highest last
    assert segment(s).tolist()[0] == 7 and segment(s).tolist()[-1] == 2
    assert len(segment(np.zeros(100) + np.arange(100), 0.29, 0.0)[:29]) == 29  # floor on the decimal: 29, not 28
    assert set(segment(np.arange(100.0), 0.29, 0.0)[:29].tolist()) == set(range(29))


@pytest.mark.parametrize("ties", [False, True])
def test_segment_against_definition_on_random_scores(ties):
    rng = np.random.default_rng(12)
    for trial in range(60):
        n = int(rng.integers(0, 60)) if trial else 0
        s = random_scores(rng, n, ties)
        fr, br = float(rng.choice([0, 0.1, 0.25, 0.5])), float(rng.choice([0, 0.1, 0.3, 0.5]))
        ends = rng.choice(["low", "high"], size=2).tolist()
        seed = int(rng.integers(0, 1000))
        p = segment(s, fr, br, ends[0], ends[1], seed)
        assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(n))
        assert p.tolist() == segment(s, fr, br, ends[0], ends[1], seed).tolist()  # seeded: the same again
        ref = ref_segment_sets(s.tolist(), fr, br, *ends)
        if ends[0] == ends[1]:
            nf, nb, block, middle = ref
            got = p.tolist()
            assert set(got[:nf]) | set(got[n - nb :]) == block and set(got[nf : n - nb]) == middle
        else:
            front, middle, back = ref
            got = p.tolist()
            nf, nb = len(front), len(back)
            assert (set(got[:nf]), set(got[nf : n - nb]), set(got[n - nb :])) == (front, middle, back)
    big = np.random.default_rng(0).standard_normal(200)
    assert segment(big, seed=1).tolist() != segment(big, seed=2).tolist()  # the middle is shuffled by the seed


def test_jitter_worked_example():
    s = np.linspace(0.1, 0.9, 9)  # folding with 3 layers: 0 3 6 1 4 7 2 5 8
    windows = [{0, 3}, {6, 1}, {4, 7}, {2, 5}, {8}]  # --jitter 2: (0 3)(6 1)(4 7)(2 5)(8)
    seen = set()
    for seed in range(30):
        p = order(s, "folding", jitter=2, layers=3, seed=seed).tolist()
        assert [set(p[i : i + 2]) for i in range(0, 9, 2)] == windows
        seen.add(tuple(p))
    assert len(seen) > 10  # each of the 4 full windows is swapped or not: 16 orders in all
    p = order(s, "folding", jitter=4, seed=7).tolist()  # windows (0 3 6 1)(4 7 2 5)(8)
    assert set(p[:4]) == {0, 3, 6, 1} and set(p[4:8]) == {4, 7, 2, 5} and p[8] == 8
    assert order(s, "folding", jitter=1, seed=7).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert order(s, "folding", jitter=0).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_jitter_properties_on_every_ordering():
    rng = np.random.default_rng(13)
    for trial in range(40):
        n = int(rng.integers(0, 80)) if trial else 0
        s = random_scores(rng, n, trial % 2 == 1)
        for name in ORDERINGS:
            base = ORDERINGS[name](s, seed=trial) if name in ("shuffle", "segment") else ORDERINGS[name](s)
            for w in (0, 1, 2, 3, 7, n, n + 5):
                p = order(s, name, jitter=w, seed=trial)
                assert sorted(p.tolist()) == list(range(n))
                where = {v: j for j, v in enumerate(p.tolist())}
                moves = [abs(where[v] - j) for j, v in enumerate(base.tolist())]
                if w <= 1:
                    assert p.tolist() == base.tolist()
                    continue
                assert max(moves, default=0) < w  # every sequence moves fewer than W positions
                # it stays in its own window [kW, (k+1)W)
                assert all(where[v] // w == j // w for j, v in enumerate(base.tolist()))
                assert p.tolist() == order(s, name, jitter=w, seed=trial).tolist()  # deterministic
    perm = np.arange(1000)
    assert jittering(perm, 10, 1).tolist() != jittering(perm, 10, 2).tolist()


def test_jitter_is_uniform_within_a_window():
    # 6 orders of a window of 3: each should come up about 1/6 of the time
    counts: dict = {}
    for seed in range(3000):
        key = tuple(jittering(np.array([5, 6, 7]), 3, seed).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6 and all(400 < c < 600 for c in counts.values()), counts


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
        (lambda s: segment(s, front_ratio=1.5), "--front-ratio must be in [0, 1], got 1.5"),
        (lambda s: segment(s, back_ratio=-0.1), "--back-ratio must be in [0, 1], got -0.1"),
        (lambda s: segment(s, 0.6, 0.5), "--front-ratio + --back-ratio must be <= 1"),
        (lambda s: segment(s, front_from="middle"), "--front-from must be low or high"),
        (lambda s: segment(s, seed=-2), "--seed must be an integer >= 0"),
        (lambda s: order(s, "folding", jitter=-1), "--jitter must be an integer >= 0"),
        (lambda s: order(s, "folding", jitter=2.5), "--jitter must be an integer >= 0"),
        (lambda s: order(s, "folding", seed=3), "--seed does not apply to --method folding"),
        (lambda s: order(s, "sorting", layers=3), "--layers does not apply to --method sorting"),
        (lambda s: order(s, "segment", descending=True), "--descending does not apply to --method segment"),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(LQSError, match=re.escape(match)):
        call(np.array([0.3, 0.1, 0.2]))
