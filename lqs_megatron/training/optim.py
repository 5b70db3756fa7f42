"""AdamW, the warmup + cosine schedule, and gradient clipping that knows about tensor parallelism."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lqs_megatron.parallel.dims import ParallelDims


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """AdamW (torch's fused kernel on CUDA, foreach on the CPU); no weight decay on 1-d tensors (norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = all(p.is_cuda for p in params)
    kw = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kw)


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate of update ``step`` (0-based): linear warmup to ``lr`` over ``warmup`` updates,
    then cosine decay to ``min_lr`` at ``total``. A pure function of the step, so resuming is exact."""

    lr: float
    min_lr: float
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, dims: ParallelDims) -> torch.Tensor:
    """Clip to a global norm over the whole model: sharded gradients (``p.tp_dim``) are summed over
    the tp group, replicated ones (norm weights) counted once. Returns the norm before clipping."""
    grads_sh = [p.grad for p in params if p.grad is not None and getattr(p, "tp_dim", None) is not None]
    grads_rep = [p.grad for p in params if p.grad is not None and getattr(p, "tp_dim", None) is None]
    device = (grads_sh + grads_rep)[0].device
    sq = torch.zeros((), device=device, dtype=torch.float32)
    if grads_sh:
        sq = torch.nn.utils.get_total_norm(grads_sh, 2.0, foreach=True).float() ** 2
    if dims.tp > 1:
        dims.all_reduce(sq, group="tp")
    if grads_rep:
        sq = sq + torch.nn.utils.get_total_norm(grads_rep, 2.0, foreach=True).float() ** 2
    total = sq.sqrt()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total
