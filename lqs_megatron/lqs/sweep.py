"""The backward sweep of ``lqs annotate`` as a generator of scoring events.

:func:`backward_sweep` walks the segments of the trajectory last first; for ``i`` down each
segment it scores the proxy set when ``i % K == 0`` (``lqs/stats.py``, ``lqs/scores.py``) and
steps the costate (``lqs/costate.py``). After every scoring step it yields the
:class:`~lqs_megatron.lqs.state.SweepState` (``s`` and ``c`` gathered over the data-parallel
ranks, ``lambda_i``, the target-loss curve so far, the per-step ``cos`` statistics): the
caller decides what happens at a scoring step (save the state, log, a metrics hook, the
fault injection of the tests), so the mathematics here carries no plumbing. The timer is
passed in (any ``phase -> context manager``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.costate import Costate
from lqs_megatron.lqs.examples import ExampleSet
from lqs_megatron.lqs.scores import score_update
from lqs_megatron.lqs.state import SweepState
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.lqs.trajectory import Trajectory
from lqs_megatron.lqs.vectors import ParamSpace
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.step import autocast

Timer = Callable[[str], contextlib.AbstractContextManager]


def no_timer(phase: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(kw_only=True)
class Sweep:
    """What the backward sweep works on: the model's parameter space, the trajectory, the costate,
    the statistics pass, and this rank's share ``[lo, hi)`` of the proxy set in micro-batches."""

    space: ParamSpace
    trajectory: Trajectory
    costate: Costate
    stats: ExampleStats
    proxy: ExampleSet
    proxy_plan: list[np.ndarray]
    lo: int
    hi: int
    interval: int
    method: str
    compute_dtype: torch.dtype

    @property
    def dims(self) -> ParallelDims:
        return self.space.dims

    def score_step(self, lam, s_local: np.ndarray, c_local: np.ndarray) -> dict[str, float]:
        """Update this rank's ``s``/``c`` with the statistics at the model's ``theta_i`` and ``lambda_{i+1}``;
        return the step's ``cos`` statistics over the whole proxy set (fraction positive, mean)."""
        dims, lr = self.dims, self.trajectory.lr
        lam_norm = self.space.norm(lam)
        acc = torch.zeros(3, dtype=torch.float64, device=dims.device)  # positive, sum of cos, count
        for idx in self.proxy_plan:
            with autocast(dims.device, self.compute_dtype):
                dot, sq = self.stats(self.proxy.batch(idx).to(dims.device), lam)
            k = idx - self.lo
            s_k, c_k = s_local[k], c_local[k]
            cos = score_update(s_k, c_k, dot.cpu().numpy(), sq.cpu().numpy(), lam_norm, lr, self.method)
            s_local[k], c_local[k] = s_k, c_k
            acc += torch.tensor([float((cos > 0).sum()), float(cos.sum()), float(len(cos))], dtype=torch.float64)
        dims.all_reduce(acc, group="dp")
        n = max(float(acc[2]), 1.0)
        return {"positive": float(acc[0]) / n, "mean": float(acc[1]) / n}


def gather(dims: ParallelDims, arrays: list[np.ndarray], lo: int, n: int) -> list[np.ndarray]:
    """Full-length copies, on every rank, of each data-parallel rank's slice ``[lo, lo + len)`` of ``arrays``."""
    buf = torch.zeros(len(arrays), n, dtype=torch.float64, device=dims.device)
    for k, a in enumerate(arrays):
        buf[k, lo : lo + len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float64))
    dims.all_reduce(buf, group="dp")
    out = buf.cpu().numpy()
    return [out[k].copy() for k in range(len(arrays))]


def backward_sweep(sw: Sweep, state: SweepState, timer: Timer = no_timer, progress=None) -> Iterator[SweepState]:
    """Continue the sweep from ``state`` (``lambda_{state.step}``, scores through that step) down to step 0,
    yielding ``state`` after every scoring step; ``state`` holds the finished sweep when the generator ends.

    ``state.s``/``state.c`` are complete (gathered) in every yielded state; between scoring
    steps each rank updates only its own slice. Step 0 is always a scoring step, so the last
    yielded state holds the final scores.
    """
    traj, costate, space = sw.trajectory, sw.costate, sw.space
    n = len(state.s)
    s_local, c_local = state.s[sw.lo : sw.hi].copy(), state.c[sw.lo : sw.hi].copy()
    lam = state.lam
    for a, e in traj.segments():
        if a >= state.step:
            continue
        last = min(e, state.step) - 1
        with timer("recompute"):
            thetas = traj.recompute(a, last)
        for i in range(last, a - 1, -1):
            space.load_into_model(thetas[i - a])
            thetas[i - a] = None
            scoring = i % sw.interval == 0
            if scoring:
                with timer("scoring"):
                    state.cos_stats[i] = sw.score_step(lam, s_local, c_local)
            with timer("target_grad"):
                g_tgt, value = costate.target_grad()
            with timer("hvp"):
                h = costate.hvp(i, lam)
            lam = costate.combine(lam, g_tgt, h)
            if not np.isfinite(value):
                raise LQSError(f"target loss is {value} at step {i}: the trajectory diverged (lower --lr)")
            state.target_losses[i] = value
            state.step, state.lam = i, lam
            if scoring:
                state.scoring_steps_done += 1
                with timer("gather"):
                    state.s, state.c = gather(sw.dims, [s_local, c_local], sw.lo, n)
                yield state
            if progress is not None:
                progress.update(1)
