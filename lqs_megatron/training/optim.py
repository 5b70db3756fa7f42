"""AdamW (optionally sharded over data-parallel ranks), the warmup + cosine schedule, and gradient clipping
that knows about tensor parallelism."""

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
    dims: ParallelDims | None = None,
    distributed: bool = False,
) -> torch.optim.Optimizer:
    """AdamW (torch's fused kernel on CUDA, foreach on the CPU); no weight decay on 1-d tensors (norms).

    ``distributed`` (``--distributed-optimizer``) with ``dims.dp > 1``: torch's
    ``ZeroRedundancyOptimizer`` over the data-parallel group, so each dp rank keeps the AdamW
    state of about 1/dp of this tp shard's parameters and broadcasts its updated ones after the
    step (ZeRO stage 1). The update is the plain AdamW's, parameter by parameter. Its
    :func:`optimizer_state_for_save` is the plain optimizer's state dict, so checkpoints are the
    same with and without it."""
    named = dict(model.named_parameters())
    decay, no_decay = ([named[n] for n in names] for names in _group_names(model))
    params = decay + no_decay
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = all(p.is_cuda for p in params)
    kw = {"fused": True} if on_cuda else {"foreach": True}
    if distributed and dims is not None and dims.dp > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(
            groups, optimizer_class=torch.optim.AdamW, process_group=dims.dp_group, lr=lr, betas=betas, eps=eps, **kw
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kw)


def _group_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """The trainable parameters' names of the two groups: matrices (weight decay), then 1-d tensors."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.ndim >= 2], [n for n, p in named if p.ndim < 2]


def optimizer_param_names(model: nn.Module) -> list[str]:
    """The parameter name of each index of :func:`build_optimizer`'s ``state_dict`` (its groups in order)."""
    decay, no_decay = _group_names(model)
    return decay + no_decay


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    """True for the distributed optimizer (each dp rank holds part of the state)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (the wrapped AdamW of the distributed optimizer)."""
    return optimizer.optim if is_sharded(optimizer) else optimizer


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state tensors held on this rank (AdamW: two moments and a step per parameter)."""
    return sum(
        v.numel() * v.element_size()
        for st in local_optimizer(optimizer).state.values()
        for v in st.values()
        if torch.is_tensor(v)
    )


def optimizer_state_for_save(optimizer: torch.optim.Optimizer, dims: ParallelDims) -> dict | None:
    """The whole optimizer state of this tp shard as the plain AdamW's ``state_dict`` on dp rank 0,
    None on the other dp ranks. Collective over the dp group for the distributed optimizer (its
    shards are gathered onto dp rank 0, on the CPU): every rank calls it."""
    if is_sharded(optimizer):
        optimizer.consolidate_state_dict(to=0)
        sd = optimizer.state_dict() if dims.dp_rank == 0 else None
        optimizer._all_state_dicts = []  # free the gathered copy (ZeRO keeps it otherwise)
        return sd
    return optimizer.state_dict() if dims.dp_rank == 0 else None


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
