"""The costate ``lambda`` of the LQS backward sweep.

``lambda_T = grad L_tgt(theta_T)`` and, for ``i = T-1 .. 0``::

    lambda_i = lambda_{i+1} + grad L_tgt(theta_i) - eta * H(b_i; theta_i) lambda_{i+1}

``lambda`` is a parameter-shaped vector kept in the master precision (float32, or float64
for float64 models), one shard per tensor-parallel rank, identical on every data-parallel
rank. The target gradient is micro-batched over the target set (split contiguously over
the data-parallel ranks, sorted by length inside a rank for less padding) and the
Hessian-vector product over the train batch ``b_i`` (``lqs/derivatives.py``); both are
all-reduced, so every rank holds the same ``lambda``.
"""

from __future__ import annotations

import torch

from lqs_megatron.lqs.derivatives import example_losses, hvp, loss_grad
from lqs_megatron.lqs.examples import ExampleSet, weighted_micro_batches
from lqs_megatron.lqs.trajectory import Trajectory
from lqs_megatron.lqs.vectors import ParamSpace, Vector
from lqs_megatron.parallel.dims import rank_slice
from lqs_megatron.training.step import autocast


class Costate:
    """Target gradients and the ``lambda`` recursion at the model's current parameters."""

    def __init__(
        self,
        space: ParamSpace,
        target: ExampleSet,
        trajectory: Trajectory,
        micro_batch_size: int,
        master_dtype: torch.dtype,
        compute_dtype: torch.dtype,
    ):
        self.space, self.target, self.trajectory = space, target, trajectory
        self.micro_batch_size = micro_batch_size
        self.master_dtype, self.compute_dtype = master_dtype, compute_dtype
        dims = space.dims
        lo, hi = rank_slice(len(target), dims.dp, dims.dp_rank)
        self.target_indices = torch.arange(lo, hi).numpy()

    def target_grad(self) -> tuple[Vector, float]:
        """``(grad L_tgt(theta), L_tgt(theta))`` at the model's parameters."""
        batches = weighted_micro_batches(
            self.target, self.target_indices, len(self.target), self.micro_batch_size, self.space.dims.device
        )
        return loss_grad(self.space, batches, self.master_dtype, self.compute_dtype)

    @torch.no_grad()
    def target_loss(self) -> float:
        """``L_tgt(theta)`` at the model's parameters (forward only; all-reduced over dp)."""
        dims = self.space.dims
        value = torch.zeros((), dtype=torch.float64, device=dims.device)
        batches = weighted_micro_batches(
            self.target, self.target_indices, len(self.target), self.micro_batch_size, dims.device
        )
        for batch, w in batches:
            with autocast(dims.device, self.compute_dtype):
                value += example_losses(self.space.model, batch).double().sum() * w
        dims.all_reduce(value, group="dp")
        return float(value)

    def hvp(self, i: int, lam: Vector) -> Vector:
        """``H(b_i; theta) lam`` at the model's parameters."""
        return hvp(self.space, self.trajectory.batches(i), lam, self.master_dtype, self.compute_dtype)

    def combine(self, lam: Vector, g_tgt: Vector, h: Vector) -> Vector:
        """``lambda_i = lambda_{i+1} + grad L_tgt(theta_i) - eta * H(b_i; theta_i) lambda_{i+1}``."""
        lr = self.trajectory.lr
        with torch.no_grad():
            return {n: lam[n] + g_tgt[n] - lr * h[n] for n in lam}
