"""``--lr auto``: choose the replay's learning rate ``eta`` from the data, by a short probe.

The rule (documented in docs/annotation.md, "Choosing the learning rate"): run the first
``P`` steps of the SGD replay (the same batches ``b_0 .. b_{P-1}``, the same plain SGD) from
``theta_0`` at each rate of a log grid, smallest first, measuring the target loss
``L_tgt`` after every step. A rate *passes* when ``L_tgt`` falls at every one of the ``P``
steps. The chosen rate is the largest rate of the grid that passes while every smaller rate
passed too: the probe stops at the first rate that fails (a rate too large for the model and
data), so the cost is bounded by the grid and usually much smaller. If even the smallest
rate fails, the smallest rate is used and the result says so (``passed`` is empty): the
replay's target loss does not fall at any of these rates, which the health check reports.

Cost: per rate tried, at most ``P`` train steps (forward + backward of ``B`` examples) and
``P`` forwards of the target set, plus one target forward at ``theta_0``; the model is reset
to ``theta_0`` from one copy of the parameters held in memory. With the default grid (9 rates,
``1e-4 .. 1``) and ``P = min(T, 10)`` that is at most 90 train steps and 91 target forwards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from lqs_megatron.lqs.costate import Costate
from lqs_megatron.lqs.trajectory import Trajectory

log = logging.getLogger(__name__)

DEFAULT_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
"""The rates tried by ``--lr auto`` (about half a decade apart)."""
DEFAULT_PROBE_STEPS = 10
"""``P``: steps of the replay run at each rate (at most ``T``)."""
RULE = (
    "the largest grid rate whose target loss fell at every one of the first P replay steps, "
    "all smaller rates having passed too (the probe stops at the first rate that fails)"
)


@dataclass
class ProbeResult:
    chosen: float
    steps: int
    grid: list[float]
    curves: list[dict] = field(default_factory=list)
    """Per rate tried: ``lr``, ``target_loss`` (``L_tgt`` at steps 0..), ``passed``."""
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


def falls_at_every_step(curve: list[float]) -> bool:
    """True when every value is finite and below the one before."""
    return all(math.isfinite(b) and b < a for a, b in zip(curve, curve[1:]))


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
    try:
        for lr in grid:
            curve = [start]
            for j in range(steps):
                traj.sgd_step(j, lr=lr)
                curve.append(costate.target_loss())
                if not falls_at_every_step(curve):
                    break
            passed = len(curve) == steps + 1 and falls_at_every_step(curve)
            result.curves.append({"lr": lr, "target_loss": curve, "passed": passed})
            space.load_into_model(theta0)
            log.info(
                "lr probe: eta=%g %s (L_tgt %s)",
                lr,
                "falls at every step" if passed else "fails",
                " ".join(f"{v:.4f}" for v in curve),
            )
            if not passed:
                break
            result.chosen = lr
    finally:
        space.load_into_model(theta0)
    if not result.passed:
        log.warning(
            "lr probe: the target loss did not fall at every step even at eta=%g; using it (see the health check)",
            grid[0],
        )
    result.seconds = time.perf_counter() - t0
    log.info("lr probe: chose eta=%g in %.1fs", result.chosen, result.seconds)
    return result


def parse_grid(text: str) -> list[float]:
    """``"1e-3,1e-2,0.1"`` -> floats (for ``--lr-grid``)."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lr-grid must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and np.isfinite(v)) for v in vals):
        raise ValueError(f"--lr-grid must hold positive numbers, got {text!r}")
    return vals
