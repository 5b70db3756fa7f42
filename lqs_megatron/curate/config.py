"""Settings of ``lqs select`` and ``lqs order`` (see :mod:`lqs_megatron.options`).

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from lqs_megatron.options import option

SELECT_METHODS = ("top-r", "top-k", "threshold")
#: the setting each selection method needs
SELECT_PARAMS = {"top-r": "r", "top-k": "k", "threshold": "threshold"}
ORDER_METHODS = ("folding", "sorting", "shuffle", "zigzag", "stair", "saw")
#: the settings an ordering may take (each method accepts the ones its function names)
ORDER_PARAMS = ("layers", "sections", "transition_ratio", "descending", "seed")


@dataclass(kw_only=True)
class CurateIO:
    """Input and output of ``lqs select`` and ``lqs order``."""

    data: str = option(metavar="PREFIX|FILE.jsonl")
    """Input dataset prefix or jsonl file."""
    scores: str | None = option(None, metavar="FILE.npy")
    """Scores (required for a dataset, optional for jsonl)."""
    out: str = option(metavar="PREFIX|FILE.jsonl")
    """Output prefix (or .jsonl for jsonl)."""
    score_field: str = "score"
    """Score field of jsonl records."""


@dataclass(kw_only=True)
class SelectConfig(CurateIO):
    """Settings of ``lqs select``."""

    method: str = option(choices=SELECT_METHODS)
    """Selection method."""
    r: float | None = None
    """top-r: the fraction to keep, in [0, 1] (required with --method top-r)."""
    k: int | None = None
    """top-k: the number to keep, in [0, N] (required with --method top-k)."""
    threshold: float | None = None
    """threshold: keep scores >= this (required with --method threshold)."""


@dataclass(kw_only=True)
class OrderConfig(CurateIO):
    """Settings of ``lqs order``."""

    method: str = option(choices=ORDER_METHODS)
    """Ordering method."""
    layers: int | None = None
    """folding/zigzag/stair/saw: passes L (default: 3, 5, 3, 2)."""
    sections: int | None = None
    """stair/saw: number of sections (default: 2, 3)."""
    transition_ratio: float | None = None
    """stair/saw: region radius / N (default: 0.225, 0.075)."""
    descending: bool | None = None
    """Score-based methods: high scores first."""
    seed: int | None = None
    """shuffle: random seed (default: 0)."""
