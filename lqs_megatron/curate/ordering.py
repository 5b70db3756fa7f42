"""Data ordering: a training order over the sequences, from one score per sequence.

An ordering is one small function ``fn(scores, **params) -> perm``: ``perm`` is a
permutation of ``0..N-1`` (int64) and the sequence trained on in position ``j`` is
``perm[j]``. :data:`ORDERINGS` maps the ``lqs order --method`` names to them; a new
ordering is one more function and one more entry.

All score-based orderings start from the **sorted list**: positions sorted by score
ascending (``descending=True``: descending), equal scores in index order (a stable
sort). With ``S = sorted list`` and ``L`` layers:

- ``sorting``: ``S`` itself (curriculum: low scores first).
- ``folding`` (DELT's Folding Ordering, FO): ``L`` passes over ``S``; pass ``l``
  (``l = 0..L-1``) takes ``S[l], S[l+L], S[l+2L], ...``. Each pass is itself ascending
  in score, so the model sees the score range ``L`` times, low to high each time.
- ``zigzag`` (ZIG, from DELT's follow-up work): as ``folding``, but every odd pass
  (``l = 1, 3, ...``) is reversed (high to low), so consecutive passes meet at similar
  scores instead of jumping from the highest back to the lowest.
- ``stair`` (STR) and ``saw`` (SAW): ``S`` with ``sections - 1`` transition regions.
  Split points ``p_s = round(N * s / sections)`` for ``s = 1..sections-1``, radius
  ``r = round(N * transition_ratio)`` (Python's ``round``: halves to even, as the
  reference code). Walking ``S`` with a cursor ``c`` (from 0): the region of ``p_s`` is
  ``[max(c, p_s - r), min(N, p_s + r))``; ``S[c:start]`` is emitted as it is, the region
  folded (``stair``) or zigzagged (``saw``) with ``L`` layers, and ``c`` moves to the
  region's end; ``S[c:]`` closes the order. ``sections = 1`` or ``transition_ratio = 0``
  gives ``S``.
- ``shuffle``: ``numpy.random.default_rng(seed).permutation(N)``; scores are not used.

Defaults follow the configs of the released DELT / data-efficacy code: folding 3 layers
(DELT's ``folding.yaml``), zigzag 5, stair 3 layers / 2 sections / ratio 0.225, saw 2
layers / 3 sections / ratio 0.075.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np

from lqs_megatron.data.scores import check_scores
from lqs_megatron.errors import LQSError


def _int_param(value, name: str, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise LQSError(f"--{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def sorted_positions(scores, descending: bool = False) -> np.ndarray:
    """Positions sorted by score (ascending, or descending), equal scores in index order."""
    s = check_scores(scores)
    return np.argsort(-s if descending else s, kind="stable").astype(np.int64)


def _fold(positions: np.ndarray, layers: int, reverse_odd: bool) -> np.ndarray:
    passes = [positions[l::layers] for l in range(layers)]
    if reverse_odd:
        passes = [p[::-1] if l % 2 else p for l, p in enumerate(passes)]
    return np.concatenate(passes) if passes else positions


def sorting(scores, descending: bool = False) -> np.ndarray:
    """Sorted by score, low to high (``descending``: high to low)."""
    return sorted_positions(scores, descending)


def folding(scores, layers: int = 3, descending: bool = False) -> np.ndarray:
    """DELT's Folding Ordering: ``layers`` interleaved passes over the sorted list."""
    layers = _int_param(layers, "layers", 1)
    return _fold(sorted_positions(scores, descending), layers, reverse_odd=False)


def zigzag(scores, layers: int = 5, descending: bool = False) -> np.ndarray:
    """Folding with every odd pass reversed."""
    layers = _int_param(layers, "layers", 1)
    return _fold(sorted_positions(scores, descending), layers, reverse_odd=True)


def _transitions(
    scores, layers: int, sections: int, transition_ratio: float, descending: bool, reverse_odd: bool
) -> np.ndarray:
    layers = _int_param(layers, "layers", 1)
    sections = _int_param(sections, "sections", 1)
    ratio = float(transition_ratio)
    if not math.isfinite(ratio) or ratio < 0:
        raise LQSError(f"--transition-ratio must be >= 0, got {transition_ratio!r}")
    s = sorted_positions(scores, descending)
    n = len(s)
    if n == 0 or sections == 1 or ratio == 0:
        return s
    radius = round(n * ratio)
    parts, cursor = [], 0
    for sec in range(1, sections):
        split = round(n * sec / sections)
        start, end = max(cursor, split - radius), min(n, split + radius)
        parts.append(s[cursor:start])
        parts.append(_fold(s[start:end], layers, reverse_odd))
        cursor = max(cursor, end)
    parts.append(s[cursor:])
    return np.concatenate(parts)


def stair(
    scores, layers: int = 3, sections: int = 2, transition_ratio: float = 0.225, descending: bool = False
) -> np.ndarray:
    """Sorted, with folded transition regions around ``sections - 1`` split points (STR)."""
    return _transitions(scores, layers, sections, transition_ratio, descending, reverse_odd=False)


def saw(
    scores, layers: int = 2, sections: int = 3, transition_ratio: float = 0.075, descending: bool = False
) -> np.ndarray:
    """Sorted, with zigzagged transition regions around ``sections - 1`` split points (SAW)."""
    return _transitions(scores, layers, sections, transition_ratio, descending, reverse_odd=True)


def shuffle(scores, seed: int = 0) -> np.ndarray:
    """A seeded uniform permutation (the scores only give the length; they are still validated)."""
    s = check_scores(scores)
    return np.random.default_rng(_int_param(seed, "seed", 0)).permutation(len(s)).astype(np.int64)


ORDERINGS: Mapping[str, Callable[..., np.ndarray]] = MappingProxyType(
    {"folding": folding, "sorting": sorting, "shuffle": shuffle, "zigzag": zigzag, "stair": stair, "saw": saw}
)
"""Method name (as ``lqs order --method`` spells it) -> ``fn(scores, **params) -> permutation``."""


def order(scores, method: str, **params) -> np.ndarray:
    """Run ordering ``method`` (a key of :data:`ORDERINGS`) and check that it returned a permutation."""
    if method not in ORDERINGS:
        raise LQSError(f"unknown ordering method {method!r} (choose from {', '.join(ORDERINGS)})")
    perm = np.asarray(ORDERINGS[method](scores, **params), dtype=np.int64)
    n = len(np.asarray(scores))
    if len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n)):
        raise AssertionError(f"ordering {method!r} did not return a permutation of {n} positions")  # a bug, not input
    return perm
