"""The replayed training trajectory ``theta_0 .. theta_T``, checkpointed over time.

``theta_{i+1} = theta_i - eta * grad L(b_i; theta_i)``: plain SGD, no momentum, no weight
decay, constant learning rate, on master weights of at least float32 (the model's own
parameters: float32, or float64 with ``--precision fp64``; bf16 runs under autocast on those
float32 weights). Batch ``b_i`` is examples ``j mod N_train``, ``j`` in ``[i B, (i+1) B)``,
of the train set in stored order, split contiguously over the data-parallel ranks and cut
into micro-batches; one all-reduce sums the weighted gradients.

Checkpointing over time (``S = ceil(sqrt(T))``): the forward pass keeps ``theta_i`` on disk
for ``i`` in ``{0, S, 2S, ...}`` and ``T`` (one safetensors file per tensor-parallel rank,
written by data-parallel rank 0 only, read back by it and broadcast to the others). The
backward sweep recomputes one segment ``[a, min(a + S, T))`` at a time from ``theta_a``
(``S - 1`` SGD steps) and holds that segment's ``theta`` in host memory: at most ``S``
parameter vectors in RAM, ``ceil(T / S) + 1`` on disk. The recomputation runs the same
operations in the same order as the forward pass, so it reproduces ``theta_i`` bit for bit.

``trajectory.json`` beside the files records the run's fingerprint, the checkpoints written
and the train-batch losses; a resumed run continues the forward pass from the last
checkpoint, or skips it when complete.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist

from lqs_megatron.lqs.derivatives import loss_grad
from lqs_megatron.lqs.examples import ExampleSet, train_indices, weighted_micro_batches
from lqs_megatron.lqs.vectors import ParamSpace, Vector, load_vector, save_vector
from lqs_megatron.parallel.dims import rank_slice
from lqs_megatron.utils.atomic import atomic_file, save_json

logger = logging.getLogger(__name__)


def checkpoint_interval(steps: int) -> int:
    """``ceil(sqrt(T))``, computed exactly on integers."""
    s = math.isqrt(steps)
    return s if s * s == steps else s + 1


class Trajectory:
    """SGD replay over ``train`` from the model's current parameters (``theta_0``)."""

    def __init__(
        self,
        *,
        space: ParamSpace,
        train: ExampleSet,
        steps: int,
        lr: float,
        batch_size: int,
        micro_batch_size: int,
        ckpt_dir: str | Path,
        fingerprint: str,
        master_dtype: torch.dtype,
        compute_dtype: torch.dtype,
    ):
        self.space, self.train, self.steps, self.lr = space, train, steps, lr
        self.batch_size, self.micro_batch_size = batch_size, micro_batch_size
        self.dir = Path(ckpt_dir)
        self.fingerprint = fingerprint
        self.master_dtype, self.compute_dtype = master_dtype, compute_dtype
        self.interval = checkpoint_interval(steps)
        self.saved: list[int] = []
        self.train_losses: dict[int, float] = {}
        self.dims = space.dims
        self.writer = self.dims.dp_rank == 0

    @property
    def checkpoint_steps(self) -> list[int]:
        return sorted(set(range(0, self.steps, self.interval)) | {self.steps})

    def path(self, i: int) -> Path:
        return self.dir / f"theta_{i:06d}_tp{self.dims.tp_rank}.safetensors"

    # -- one SGD step ------------------------------------------------------------------

    def batches(self, i: int):
        """This rank's weighted micro-batches of ``b_i`` (stored order; split contiguously over dp)."""
        idx = train_indices(i, self.batch_size, len(self.train))
        lo, hi = rank_slice(len(idx), self.dims.dp, self.dims.dp_rank)
        dev = self.dims.device
        return weighted_micro_batches(self.train, idx[lo:hi], self.batch_size, self.micro_batch_size, dev, sort=False)

    def sgd_step(self, i: int, lr: float | None = None) -> float:
        """``theta <- theta - eta grad L(b_i; theta)`` on the model's parameters; returns ``L(b_i; theta_i)``.

        ``lr`` overrides ``eta`` (the learning-rate probe of ``--lr auto``, ``lqs/lr_probe.py``)."""
        grad, loss = loss_grad(self.space, self.batches(i), self.master_dtype, self.compute_dtype)
        with torch.no_grad():
            for n, p in self.space.params.items():
                p.add_(grad[n].to(p.dtype), alpha=-(self.lr if lr is None else lr))
        return loss

    # -- checkpoints ------------------------------------------------------------------

    def _save(self, i: int) -> None:
        if self.writer:
            with atomic_file(self.path(i)) as tmp:
                save_vector(tmp, self.space.copy_of_params(device="cpu"))
        self.saved = sorted(set(self.saved) | {i})
        self.dims.barrier()
        if self.dims.is_main:
            save_json(
                self.dir / "trajectory.json",
                {
                    "fingerprint": self.fingerprint,
                    "steps": self.steps,
                    "interval": self.interval,
                    "saved": self.saved,
                    "train_losses": {str(k): v for k, v in sorted(self.train_losses.items())},
                },
            )

    def load(self, i: int) -> None:
        """Put checkpoint ``theta_i`` into the model (read by dp rank 0, broadcast to the other dp ranks)."""
        if self.writer:
            self.space.load_into_model(load_vector(self.path(i), self.dims.device))
        if self.dims.dp > 1 and self.dims.dp_group is not None:
            src = self.dims.dp_group_ranks()[0]
            with torch.no_grad():
                for p in self.space.params.values():
                    dist.broadcast(p.data, src=src, group=self.dims.dp_group)

    def _resume_point(self) -> int | None:
        """Last checkpoint of a previous run with the same fingerprint (None: start from theta_0)."""
        meta = self.dir / "trajectory.json"
        info = json.loads(meta.read_text()) if self.dims.is_main and meta.is_file() else None
        info = self.dims.broadcast_object(info)  # read on rank 0 only: the directory need not be shared
        if info is None or info.get("fingerprint") != self.fingerprint:
            return None
        have = [i for i in info["saved"] if i in self.checkpoint_steps]
        if self.writer:
            have = [i for i in have if self.path(i).is_file()]
        flags = torch.zeros(self.steps + 1, dtype=torch.float64, device=self.dims.device)
        flags[have] = 1
        self.dims.all_reduce(flags, op="min")  # a checkpoint counts when every writer has it
        have = [i for i in range(self.steps + 1) if flags[i] > 0 and i in self.checkpoint_steps]
        contiguous = []
        for i in self.checkpoint_steps:
            if i not in have:
                break
            contiguous.append(i)
        if not contiguous:
            return None
        self.saved = contiguous
        self.train_losses = {int(k): v for k, v in info.get("train_losses", {}).items() if int(k) < contiguous[-1]}
        return contiguous[-1]

    def read_train_losses(self) -> None:
        """Fill :attr:`train_losses` from ``trajectory.json`` (a resumed sweep skips the forward pass)."""
        meta = self.dir / "trajectory.json"
        if meta.is_file():
            info = json.loads(meta.read_text())
            if info.get("fingerprint") == self.fingerprint:
                self.train_losses = {int(k): v for k, v in info.get("train_losses", {}).items()}

    # -- passes -----------------------------------------------------------------------

    def forward(self, resume: bool, progress=None) -> None:
        """Run the forward pass, writing the checkpoints (continuing a previous run's when ``resume``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        start = self._resume_point() if resume else None
        if start is None:
            start = 0
            self.saved, self.train_losses = [], {}
            self._save(0)
        else:
            logger.info("trajectory: resuming the forward pass at step %d of %d", start, self.steps)
            self.load(start)
        for i in range(start, self.steps):
            self.train_losses[i] = self.sgd_step(i)
            if (i + 1) in self.checkpoint_steps:
                self._save(i + 1)
            if progress is not None:
                progress.update(1)

    def segments(self) -> list[tuple[int, int]]:
        """``(a, e)`` for each segment ``[a, e)`` of steps, last first (the order of the backward sweep)."""
        return [(a, min(a + self.interval, self.steps)) for a in reversed(range(0, self.steps, self.interval))]

    def recompute(self, a: int, last: int, progress=None) -> list[Vector]:
        """``[theta_a, ..., theta_last]`` (host memory) by SGD from checkpoint ``theta_a``."""
        self.load(a)
        out = [self.space.copy_of_params(device="cpu")]
        for i in range(a, last):
            self.sgd_step(i)
            out.append(self.space.copy_of_params(device="cpu"))
            if progress is not None:
                progress.update(1)
        return out
