"""``--lr auto``: choose the replay's learning rate ``eta`` from the data, by a short probe.

The rule (documented in docs/annotation.md, "Choosing the learning rate"): run the first
``P`` steps of the SGD replay (the same batches ``b_0 .. b_{P-1}``, the same plain SGD) from
``theta_0`` at each rate ``r`` of a log grid, smallest first, measuring the target loss
``L_tgt`` after every step. With ``D(r) = L_0 - L_P(r)`` the probe's decrease of the target
loss, the smallest rate ``r_0`` is the first-order reference (at small rates ``D`` grows in
proportion to ``r``), and a rate's *gain* is ``G(r) = D(r) / ((r / r_0) D(r_0))``: the share
of the first-order prediction it achieves. A rate *passes* when ``G(r) >= 1/2`` and its target
loss never rises above ``L_0`` by more than 1% (the health check's threshold); for the
smallest rate that means ``D(r_0) > 0``. The chosen rate is the largest rate of the grid that
passes while every smaller rate passed too; the probe stops at the first rate that fails. If
the loss were quadratic along the replay, ``G = 1/2`` would be the rate of the largest
decrease; past it the steps overshoot, and the replay's target loss soon rises instead
of falling (docs/annotation.md, "Health of the replay"). If even the smallest rate fails
(the train stream does not lead towards the target over ``P`` steps), it is used and the
result says so (``passed`` is empty); the health check reports it.

"Falls at every step" is not the rule: one train batch whose gradient points away from the
target makes the target loss tick up at *every* rate, however small (first order), so
that rule rejects the whole grid on real data.

Cost: per rate tried, ``P`` train steps (forward + backward of ``B`` examples) and ``P``
forwards of the target set, plus one target forward at ``theta_0``; the model is reset to
``theta_0`` from one copy of the parameters held in memory. With the default grid (9 rates,
``1e-4 .. 1``) and ``P = min(T, 10)`` that is at most 90 train steps and 91 target forwards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from lqs_megatron.lqs.costate import Costate
from lqs_megatron.lqs.trajectory import Trajectory

logger = logging.getLogger(__name__)

MIN_GAIN = 0.5
"""A rate passes when its P-step decrease is at least this share of the first-order prediction."""
MAX_RISE = 0.01
"""... and its target loss never exceeds the start by more than this (relative)."""
RULE = (
    "the largest grid rate r whose P-step target-loss decrease D(r) is at least half of the first-order "
    "prediction (r / r_0) D(r_0) from the smallest rate r_0 and whose target loss never rises more than 1% "
    "above its start, all smaller rates having passed too (the probe stops at the first rate that fails)"
)


@dataclass
class ProbeResult:
    chosen: float
    steps: int
    grid: list[float]
    curves: list[dict] = field(default_factory=list)
    """Per rate tried: ``lr``, ``target_loss`` (``L_tgt`` at steps 0..P), ``gain`` ``G(r)``, ``passed``."""
    seconds: float = 0.0

    @property
    def passed(self) -> list[float]:
        return [c["lr"] for c in self.curves if c["passed"]]

    def to_dict(self) -> dict:
        return {
            "requested": "auto",
            "chosen": self.chosen,
            "rule": RULE,
            "steps": self.steps,
            "grid": self.grid,
            "passed": self.passed,
            "curves": self.curves,
            "seconds": round(self.seconds, 4),
        }


def judge(curve: list[float], lr: float, reference: tuple[float, float] | None) -> tuple[float | None, bool]:
    """``(gain, passed)`` of one rate's curve; ``reference`` is ``(r_0, D(r_0))`` (None: this is ``r_0``)."""
    start = curve[0]
    if not all(math.isfinite(v) for v in curve) or max(curve) > start + MAX_RISE * abs(start):
        return None, False
    decrease = start - curve[-1]
    if reference is None:
        return (1.0, True) if decrease > 0 else (None, False)
    r0, d0 = reference
    gain = decrease / (lr / r0 * d0)
    return gain, gain >= MIN_GAIN


def probe_learning_rate(traj: Trajectory, costate: Costate, grid, steps: int) -> ProbeResult:
    """Run the probe on the model's current parameters (``theta_0``, restored afterwards); see the module doc."""
    t0 = time.perf_counter()
    grid = sorted(float(r) for r in grid)
    if not grid or any(not (r > 0 and math.isfinite(r)) for r in grid):
        raise ValueError(f"the learning-rate grid must hold positive numbers, got {grid}")
    space = traj.space
    theta0 = space.copy_of_params(device="cpu")
    start = costate.target_loss()
    result = ProbeResult(chosen=grid[0], steps=steps, grid=grid)
    reference = None
    try:
        for lr in grid:
            curve = [start]
            for j in range(steps):
                traj.sgd_step(j, lr=lr)
                curve.append(costate.target_loss())
                if not math.isfinite(curve[-1]):
                    break
            space.load_into_model(theta0)
            gain, passed = judge(curve, lr, reference)
            result.curves.append({"lr": lr, "target_loss": curve, "gain": gain, "passed": passed})
            logger.info(
                "lr probe: eta=%g %s (gain %s; L_tgt - L_0: %s)",
                lr,
                "passes" if passed else "fails",
                "n/a" if gain is None else f"{gain:.3f}",
                " ".join(f"{v - start:+.2e}" for v in curve[1:]),
            )
            if not passed:
                break
            if reference is None:
                reference = (lr, start - curve[-1])
            result.chosen = lr
    finally:
        space.load_into_model(theta0)
    if not result.passed:
        logger.warning(
            "lr probe: the target loss did not fall over %d steps even at eta=%g; using it (see the health check)",
            steps,
            grid[0],
        )
    result.seconds = time.perf_counter() - t0
    logger.info("lr probe: chose eta=%g in %.1fs", result.chosen, result.seconds)
    return result
