"""Gradients and Hessian-vector products of mean losses over example sets, micro-batched and
data-parallel.

A set's mean loss is ``sum_x w_x l(x; theta)`` with ``w_x = 1 / (examples in the set)``;
each rank takes its share of the examples in micro-batches, accumulates ``sum w_x grad l``
into a float32 (float64 for float64 models) vector, and one all-reduce over the data-
parallel ranks gives every rank the full result: the same as one process (up to the order
of floating-point sums).

Hessian-vector products ``H v`` are double backward: ``grad`` with ``create_graph`` through
the plain-torch, twice-differentiable loss (``per_example_loss_reference``), then the
gradient of ``<grad, v>``. No Hessian is ever formed. SDPA runs with its math kernel
inside (the fused CPU and flash kernels have no double backward).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lqs_megatron.lqs.examples import Batch
from lqs_megatron.lqs.vectors import ParamSpace, Vector
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.parallel.mappings import reduce_from_region
from lqs_megatron.training.loss import per_example_lm_loss
from lqs_megatron.training.step import autocast


def example_losses(model: Decoder, batch: Batch, twice_differentiable: bool = False) -> torch.Tensor:
    """``[B]`` per-example losses ``l(x; theta)``: the fused kernel, or its twice-differentiable torch reference."""
    return per_example_lm_loss(
        model, batch.input_ids, batch.labels, batch.loss_mask, backend="torch" if twice_differentiable else "auto"
    )


@contextlib.contextmanager
def _no_silent_collectives(active: bool):
    """Fail loudly if the second backward runs through a collective that autograd cannot differentiate
    (a tensor-parallel mapping whose backward calls ``dist.all_reduce`` directly instead of its
    conjugate autograd function): the HVP would be silently wrong."""
    if not active:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "autograd kernel was not registered" in str(w.message):
            raise RuntimeError(
                "Hessian-vector product under tensor parallelism went through a collective with no autograd "
                f"kernel ({str(w.message).split(':')[0]}): the tp mappings' backward must be built from their "
                "conjugate autograd functions (parallel/mappings.py) for double backward"
            )
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _autocast(space: ParamSpace, dtype: torch.dtype):
    return autocast(next(iter(space.params.values())).device, dtype)


def loss_grad(
    space: ParamSpace, batches: Iterable[tuple[Batch, float]], acc_dtype: torch.dtype, compute_dtype: torch.dtype
) -> tuple[Vector, float]:
    """``(grad, value)`` of ``sum_x w_x l(x)`` over all ranks' ``(batch, w)`` micro-batches."""
    params = list(space.params.values())
    grad = space.zeros(acc_dtype)
    dev = params[0].device
    value = torch.zeros((), dtype=torch.float64, device=dev)
    for batch, w in batches:
        with _autocast(space, compute_dtype):
            loss = example_losses(space.model, batch).sum() * w
        gs = torch.autograd.grad(loss, params)
        for n, g in zip(space.params, gs):
            grad[n].add_(g.to(acc_dtype))
        value += loss.detach().double()
    space.all_reduce_dp(grad)
    space.dims.all_reduce(value, group="dp")
    return grad, float(value)


def hvp(
    space: ParamSpace,
    batches: Iterable[tuple[Batch, float]],
    v: Vector,
    acc_dtype: torch.dtype,
    compute_dtype: torch.dtype,
) -> Vector:
    """``H v`` of ``sum_x w_x l(x)`` over all ranks' micro-batches (double backward)."""
    params = list(space.params.values())
    out = space.zeros(acc_dtype)
    vs = [v[n].to(p.dtype) for n, p in space.params.items()]
    for batch, w in batches:
        with sdpa_kernel(SDPBackend.MATH), _autocast(space, compute_dtype):
            loss = example_losses(space.model, batch, twice_differentiable=True).sum() * w
        gs = torch.autograd.grad(loss, params, create_graph=True)
        # <grad, v> over the whole model as a replicated scalar, in Megatron's convention: the shards'
        # partial sum goes through reduce_from_region (forward all-reduce, backward identity), the
        # replicated tensors' terms (identical on every rank) are added after it, on every rank.
        sharded = [(g * vv).sum() for n, g, vv in zip(space.params, gs, vs) if space.sharded[n]]
        replicated = [(g * vv).sum() for n, g, vv in zip(space.params, gs, vs) if not space.sharded[n]]
        dot = sum(sharded)
        if space.dims.tp > 1:
            dot = reduce_from_region(dot, space.dims.tp_group)
        dot = dot + sum(replicated)
        with _no_silent_collectives(space.dims.tp > 1):
            hs = torch.autograd.grad(dot, params, allow_unused=True)
        for n, h in zip(space.params, hs):
            if h is not None:
                out[n].add_(h.to(acc_dtype))
    return space.all_reduce_dp(out)
