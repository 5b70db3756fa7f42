"""One optimizer step on this rank's share of a global batch: micro-batches, DDP, clip, AdamW.

The loss is the mean over the global batch of each example's mean token cross-entropy.
Each rank sums its examples' losses and divides by its local batch size; DDP averages the
gradients over the data-parallel group, so the update equals one process's update on the
whole global batch. Micro-batches accumulate gradients (``no_sync`` until the last).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from lqs_megatron.distributed import ParallelDims
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.optim import WarmupCosine, clip_grad_norm, set_lr


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` ("auto": bf16 on CUDA, none on the CPU)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class TrainStep:
    """Callable: ``step_fn(tokens [local_batch, L+1], step) -> {"loss", "grad_norm", "lr"}`` (tensors)."""

    def __init__(
        self,
        model: Decoder,
        dims: ParallelDims,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupCosine,
        micro_batch_size: int,
        clip_grad: float = 1.0,
        precision: str = "auto",
        compile: bool = False,
    ):
        self.model, self.dims, self.optimizer, self.schedule = model, dims, optimizer, schedule
        self.micro_batch_size, self.clip_grad = micro_batch_size, clip_grad
        self.amp_dtype = autocast_dtype(precision, dims.device)
        self.loss_module = CausalLMLoss(torch.compile(model) if compile else model)
        self.module: nn.Module = self.loss_module
        if dims.dp > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

            # the decoder has no buffers: nothing to sync per forward
            newer = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            self.module = DDP(
                self.loss_module,
                process_group=dims.dp_group,
                device_ids=[dims.device.index] if dims.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
                **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}),
            )
        self.params = [p for p in model.parameters() if p.requires_grad]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dims.device.type, dtype=self.amp_dtype)

    def losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]`` per-example losses of packed samples (no gradient), micro-batch by micro-batch."""
        tokens = tokens.to(self.dims.device, non_blocking=True)
        out = []
        with torch.no_grad(), self.autocast():
            for s in range(0, tokens.shape[0], self.micro_batch_size):
                t = tokens[s : s + self.micro_batch_size]
                labels = t[:, 1:]
                out.append(self.loss_module(t[:, :-1], labels, torch.ones_like(labels, dtype=torch.float32)))
        return torch.cat(out)

    def __call__(self, tokens: torch.Tensor, step: int) -> dict[str, torch.Tensor | float]:
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        self.model.train()
        tokens = tokens.to(self.dims.device, non_blocking=True)
        local = tokens.shape[0]
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        mask = torch.ones_like(labels, dtype=torch.float32)
        n_micro = -(-local // self.micro_batch_size)
        loss_sum = torch.zeros((), device=self.dims.device, dtype=torch.float32)
        for i in range(n_micro):
            sl = slice(i * self.micro_batch_size, (i + 1) * self.micro_batch_size)
            last = i == n_micro - 1
            sync = contextlib.nullcontext() if last or self.module is self.loss_module else self.module.no_sync()
            with sync:
                with self.autocast():
                    losses = self.module(inputs[sl], labels[sl], mask[sl])
                (losses.sum() / local).backward()
            loss_sum += losses.detach().sum()
        grad_norm = clip_grad_norm(self.params, self.clip_grad, self.dims)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.dims.all_reduce(loss_sum, group="dp")
        return {"loss": loss_sum / (local * self.dims.dp), "grad_norm": grad_norm, "lr": lr}
