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
- ``segment`` (SEG, the follow-up's boundary sharpening): a front, a middle and a back
  segment. ``F = floor(front_ratio * N)`` and ``B = floor(back_ratio * N)`` sequences
  (on the decimals as written, as ``top-r``) are taken from the ``low`` or ``high`` end of
  ``S`` (``low``: ``S[:k]``, ``high``: ``S[N-k:]``). Different ends: the front from its end,
  the back from its end of what is left. The same end: the ``F + B`` sequences at that end
  in a random order, the first ``F`` the front, the rest the back. The middle is every
  other sequence. Each segment is emitted in a random order of its own (front, middle,
  back, drawn in that order from ``numpy.random.default_rng(seed)``).
- ``shuffle``: ``numpy.random.default_rng(seed).permutation(N)``; scores are not used.

**Jittering** (JIT, the follow-up's local diversity), on top of any ordering (``jitter=W``
in :func:`order`): the order is cut into consecutive windows of ``W`` positions
(``[0, W), [W, 2W), ...``, the last one shorter) and each window's sequences are put in a
random order of their own, from a stream of ``seed`` of its own
(``numpy.random.SeedSequence(seed, spawn_key=(1,))``). Every sequence stays in its window,
so it moves fewer than ``W`` positions; ``W = 0`` or ``1`` changes nothing.

Defaults follow the configs of the released DELT / data-efficacy code: folding 3 layers
(DELT's ``folding.yaml``; data-efficacy's now says 5), zigzag 5, stair 3 layers / 2
sections / ratio 0.225, saw 2 layers / 3 sections / ratio 0.075, segment 10% low in front
and 10% high at the back.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from types import MappingProxyType

import numpy as np

from lqs_megatron.curate.selection import top_r_count
from lqs_megatron.data.datasets.scores import check_scores
from lqs_megatron.errors import LQSError

ENDS = ("low", "high")
"""The ends of the sorted list a ``segment`` boundary segment comes from."""


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


def segment(
    scores,
    front_ratio: float = 0.1,
    back_ratio: float = 0.1,
    front_from: str = "low",
    back_from: str = "high",
    seed: int = 0,
) -> np.ndarray:
    """Front and back segments from the ends of the sorted list, the rest in the middle, each shuffled (SEG)."""
    s = sorted_positions(scores)
    n_front, n_back = top_r_count(len(s), front_ratio, "front-ratio"), top_r_count(len(s), back_ratio, "back-ratio")
    if Fraction(repr(float(front_ratio))) + Fraction(repr(float(back_ratio))) > 1:
        raise LQSError(f"--front-ratio + --back-ratio must be <= 1, got {front_ratio} + {back_ratio}")
    for name, end in (("front-from", front_from), ("back-from", back_from)):
        if end not in ENDS:
            raise LQSError(f"--{name} must be low or high, got {end!r}")
    rng = np.random.default_rng(_int_param(seed, "seed", 0))

    def take(pool: np.ndarray, k: int, end: str) -> tuple[np.ndarray, np.ndarray]:
        cut = k if end == "low" else len(pool) - k
        return (pool[:cut], pool[cut:]) if end == "low" else (pool[cut:], pool[:cut])

    if front_from == back_from:
        block, middle = take(s, n_front + n_back, front_from)
        block = rng.permutation(block)
        front, back = block[:n_front], block[n_front:]
    else:
        front, rest = take(s, n_front, front_from)
        back, middle = take(rest, n_back, back_from)
    return np.concatenate([rng.permutation(front), rng.permutation(middle), rng.permutation(back)])


def shuffle(scores, seed: int = 0) -> np.ndarray:
    """A seeded uniform permutation (the scores only give the length; they are still validated)."""
    s = check_scores(scores)
    return np.random.default_rng(_int_param(seed, "seed", 0)).permutation(len(s)).astype(np.int64)


def jittering(perm, window: int, seed: int = 0) -> np.ndarray:
    """``perm`` with each window of ``window`` consecutive positions in a seeded random order (JIT)."""
    window = _int_param(window, "jitter", 0)
    perm = np.asarray(perm, dtype=np.int64)
    if window <= 1:
        return perm.copy()
    rng = np.random.default_rng(np.random.SeedSequence(_int_param(seed, "seed", 0), spawn_key=(1,)))
    positions = np.arange(len(perm))
    return perm[np.lexsort((rng.random(len(perm)), positions // window))]  # by window, then a random key


ORDERINGS: Mapping[str, Callable[..., np.ndarray]] = MappingProxyType(
    {
        "folding": folding,
        "sorting": sorting,
        "shuffle": shuffle,
        "zigzag": zigzag,
        "stair": stair,
        "saw": saw,
        "segment": segment,
    }
)
"""Method name (as ``lqs order --method`` spells it) -> ``fn(scores, **params) -> permutation``."""


def check_params(method: str, params, jitter: int | None = None) -> None:
    """:class:`LQSError` unless ``method`` is known and takes every setting in ``params`` (``seed`` also
    seeds ``jitter``, so it is accepted by any method when ``jitter`` is given) and ``jitter`` is valid."""
    if method not in ORDERINGS:
        raise LQSError(f"unknown ordering method {method!r} (choose from {', '.join(ORDERINGS)})")
    if jitter is not None:
        _int_param(jitter, "jitter", 0)
    accepted = set(inspect.signature(ORDERINGS[method]).parameters) - {"scores"}
    for name in params:
        if name not in accepted and not (name == "seed" and jitter is not None):
            raise LQSError(f"--{name.replace('_', '-')} does not apply to --method {method}")


def order(scores, method: str, jitter: int | None = None, **params) -> np.ndarray:
    """Run ordering ``method`` (a key of :data:`ORDERINGS`), then ``jitter`` windows of that many positions
    (seeded by ``params["seed"]``, default 0), and check that the result is a permutation."""
    check_params(method, params, jitter)
    fn = ORDERINGS[method]
    accepted = inspect.signature(fn).parameters
    perm = np.asarray(fn(scores, **{k: v for k, v in params.items() if k in accepted}), dtype=np.int64)
    if jitter is not None:
        perm = jittering(perm, jitter, params.get("seed", 0))
    n = len(np.asarray(scores))
    if len(perm) != n or not np.array_equal(np.sort(perm), np.arange(n)):
        raise AssertionError(f"ordering {method!r} did not return a permutation of {n} positions")  # a bug, not input
    return perm
