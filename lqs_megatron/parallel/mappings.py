"""Tensor-parallel collectives as conjugate autograd pairs, each with an explicit group.

=======================  =========================  ==========================
function                 forward                    backward
=======================  =========================  ==========================
``copy_to_region``       identity                   all-reduce (sum)
``reduce_from_region``   all-reduce (sum)           identity
``gather_from_region``   all-gather, concat last    split, keep own chunk
``split_to_region``      split, keep own chunk      all-gather, concat last
=======================  =========================  ==========================

``group=None`` (or a group of one rank) makes every function the identity, so the same
layer code runs on one process without a process group. Layers only compose these.

Each backward is built from its conjugate *autograd function* (not a bare collective), so
the backward is itself differentiable: double backward and forward-over-reverse
(Hessian-vector products, as the LQS costate needs) go through tensor parallelism.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _split_last(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if x.shape[-1] % n:
        raise ValueError(f"last dimension {x.shape[-1]} is not divisible by the group size {n}")
    return x.chunk(n, dim=-1)[group_rank(group)].contiguous()


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(group_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return _ReduceFromRegion.apply(g, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return _CopyToRegion.apply(g, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, g):
        return _SplitToRegion.apply(g, ctx.group), None


class _SplitToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, g):
        return _GatherFromRegion.apply(g, ctx.group), None


def copy_to_region(x: torch.Tensor, group) -> torch.Tensor:
    """Enter a tensor-parallel region: forward identity, backward all-reduce of the gradient."""
    return x if group_size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_region(x: torch.Tensor, group) -> torch.Tensor:
    """Leave a tensor-parallel region by summing partial results: forward all-reduce, backward identity."""
    return x if group_size(group) == 1 else _ReduceFromRegion.apply(x, group)


def gather_from_region(x: torch.Tensor, group) -> torch.Tensor:
    """Concatenate the ranks' last-dimension shards: forward all-gather, backward split."""
    return x if group_size(group) == 1 else _GatherFromRegion.apply(x, group)


def split_to_region(x: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's last-dimension chunk: forward split, backward all-gather."""
    return x if group_size(group) == 1 else _SplitToRegion.apply(x, group)
