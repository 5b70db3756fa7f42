"""One optimizer step of any model on this rank's share of a global batch: micro-batches, DDP, clip, AdamW.

The loss module returns one loss per example (``[n]``): the language model's mean token
cross-entropy per sample (pretraining), the squared error of each score (the scorer).
The step minimises their mean over the global batch: each rank backpropagates
``sum(losses) / n_local`` of each micro-batch; DDP averages the gradients over the
data-parallel group, so the update equals one process's update on the whole global batch.
Micro-batches accumulate gradients (``no_sync`` until the last).

A step whose loss or gradient norm is not finite is **not applied**: its gradients are
dropped and the weights stay as they were (``StepResult.finite`` is False; the loop
decides whether to stop or skip). Both numbers are the same on every rank (the loss is
all-reduced, the gradients are averaged before the norm), so every rank decides alike.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.optim import WarmupCosine, clip_grad_norm, set_lr


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` ("auto": bf16 on CUDA, none on the CPU)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to a 16-bit ``dtype`` on ``device``'s type; nothing for None (``--precision fp32``, the
    CPU) or a full-precision dtype (annotate's float32 / float64 compute). The one autocast of training, the LQS
    derivatives, evaluation and the scorer's predictions."""
    if dtype is None or dtype.itemsize > 2:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def wrap_data_parallel(module: nn.Module, dims: ParallelDims, find_unused_parameters: bool = False) -> nn.Module:
    """The one DDP wrapping of the project: ``module`` itself when dp == 1, else DDP over the dp group.

    ``find_unused_parameters``: for modules that may leave parameters out of the graph (an HF
    backbone under the scorer). Buffers are not synchronised: our modules hold none that a
    forward changes."""
    if dims.dp == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    newer = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    return DDP(
        module,
        process_group=dims.dp_group,
        device_ids=[dims.device.index] if dims.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        find_unused_parameters=find_unused_parameters,
        **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}),
    )


@dataclass
class StepResult:
    """What one step did: the global mean ``loss``, the gradient norm before clipping, the learning rate,
    and whether it was ``finite`` (applied)."""

    loss: float
    grad_norm: float
    lr: float
    finite: bool


class TrainStep:
    """Callable: ``step_fn(micro_batches, n_local, step) -> StepResult``.

    ``micro_batches``: this rank's micro-batches of the step, each a tuple of the loss module's
    positional arguments (on the device); ``n_local``: the examples they hold together.
    """

    def __init__(
        self,
        loss_module: nn.Module,
        dims: ParallelDims,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupCosine,
        clip_grad: float = 1.0,
        amp_dtype: torch.dtype | None = None,
        find_unused_parameters: bool = False,
        data_parallel: bool = True,
    ):
        """``data_parallel=False``: no DDP wrapper (a subclass that sums the gradients over dp itself)."""
        self.loss_module, self.dims, self.optimizer, self.schedule = loss_module, dims, optimizer, schedule
        self.clip_grad, self.amp_dtype = clip_grad, amp_dtype
        self.module = wrap_data_parallel(loss_module, dims, find_unused_parameters) if data_parallel else loss_module
        self.params = [p for p in loss_module.parameters() if p.requires_grad]

    def autocast(self):
        return autocast(self.dims.device, self.amp_dtype)

    def begin(self, step: int) -> float:
        """The step's learning rate, set on the optimizer; the model in training mode."""
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        self.loss_module.train()
        return lr

    def update(self, loss: float, finite: bool = True) -> tuple[float, bool]:
        """The policy after the gradients are in place: global-norm clip, then the optimizer step only when the
        loss, the norm (and ``finite``) are finite; gradients cleared either way. Returns ``(norm, applied)``."""
        norm = float(clip_grad_norm(self.params, self.clip_grad, self.dims))
        finite = finite and math.isfinite(loss) and math.isfinite(norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, finite

    def __call__(self, micro_batches: Sequence[tuple], n_local: int, step: int) -> StepResult:
        lr = self.begin(step)
        n_micro = len(micro_batches)
        loss_sum = torch.zeros((), device=self.dims.device, dtype=torch.float32)
        for i, mb in enumerate(micro_batches):
            last = i == n_micro - 1
            sync = contextlib.nullcontext() if last or self.module is self.loss_module else self.module.no_sync()
            with sync:
                with self.autocast():
                    losses = self.module(*mb)
                (losses.sum() / n_local).backward()
            loss_sum += losses.detach().sum()
        self.dims.all_reduce(loss_sum, group="dp")
        loss = float(loss_sum / (n_local * self.dims.dp))
        norm, finite = self.update(loss)
        return StepResult(loss, norm, lr, finite)
