"""Settings of ``lqs select`` and ``lqs order`` (see :mod:`lqs_megatron.options`).

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from lqs_megatron.errors import LQSError
from lqs_megatron.options import check_seed, option

SELECT_METHODS = ("top-r", "top-k", "threshold")
#: the setting each selection method needs
SELECT_PARAMS = {"top-r": "r", "top-k": "k", "threshold": "threshold"}
ORDER_METHODS = ("folding", "sorting", "shuffle", "zigzag", "stair", "saw", "segment")
#: the settings an ordering may take (each method accepts the ones its function names; --jitter is not one)
ORDER_PARAMS = (
    "layers",
    "sections",
    "transition_ratio",
    "descending",
    "front_ratio",
    "back_ratio",
    "front_from",
    "back_from",
    "seed",
)


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
    view: bool = False
    """Write a view instead of a copy: OUT.view.json (the source prefix and its fingerprint) beside OUT.indices.npy
    and OUT.scores.npy, no tokens; every command reads it as a dataset, `lqs materialize` writes the copy
    (docs/curation.md, "Views"). Indexed datasets only."""


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

    def __post_init__(self) -> None:
        """The method's parameter is given, the others not, and it passes the method's own check."""
        from lqs_megatron.curate.selection import PARAM_CHECKS

        for method, name in SELECT_PARAMS.items():
            if method != self.method and getattr(self, name) is not None:
                raise LQSError(f"--{name} is for --method {method}, not {self.method}")
        needed = SELECT_PARAMS.get(self.method)
        if needed is not None and getattr(self, needed) is None:
            raise LQSError(f"--method {self.method} needs --{needed}")
        if needed is not None:
            PARAM_CHECKS[self.method](getattr(self, needed))

    @property
    def params(self) -> dict:
        """``{parameter: value}`` of the method (what ``selection.select`` takes)."""
        return {SELECT_PARAMS[self.method]: getattr(self, SELECT_PARAMS[self.method])}


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
    """sorting/folding/zigzag/stair/saw: high scores first."""
    front_ratio: float | None = None
    """segment: the share of the sequences in the front segment, in [0, 1] (default: 0.1)."""
    back_ratio: float | None = None
    """segment: the share of the sequences in the back segment, in [0, 1] (default: 0.1)."""
    front_from: str | None = option(None, choices=("low", "high"))
    """segment: the end of the score range the front segment is taken from (default: low)."""
    back_from: str | None = option(None, choices=("low", "high"))
    """segment: the end of the score range the back segment is taken from (default: high)."""
    jitter: int | None = option(None, metavar="W")
    """Any method: then shuffle the order within consecutive windows of W positions, seeded by --seed (0, 1: no
    change)."""
    seed: int | None = None
    """shuffle, segment, --jitter: random seed (default: 0)."""

    def __post_init__(self) -> None:
        """The parameters apply to the method, and the ordering itself accepts them (run on one score)."""
        import numpy as np

        from lqs_megatron.curate.ordering import ORDERINGS, check_params, order

        check_seed(self.seed)
        if self.method not in ORDERINGS:
            return  # argparse's choices name it; a library caller gets order()'s error
        check_params(self.method, self.params, self.jitter)
        order(np.zeros(1), self.method, self.jitter, **self.params)

    @property
    def params(self) -> dict:
        """``{parameter: value}`` of the settings given (what ``ordering.order`` takes besides ``jitter``)."""
        return {name: getattr(self, name) for name in ORDER_PARAMS if getattr(self, name) is not None}
