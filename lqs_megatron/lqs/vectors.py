"""Parameter-shaped vectors (``theta``, gradients, the costate ``lambda``) and their arithmetic.

A vector is a ``dict`` from parameter name to a tensor of that parameter's (local, tensor-
parallel shard) shape. :class:`ParamSpace` knows the model's trainable parameters and the
parallel layout, and gives the inner products of the contract over **all** parameters of
the whole model: each rank sums its shards, replicated parameters (RMSNorm weights under
tensor parallelism) are counted on tp rank 0 only, then one all-reduce over the tp group.
Data-parallel ranks hold identical vectors; :meth:`ParamSpace.all_reduce_dp` sums the
ranks' partial gradients (each already weighted by ``1 / global count``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn

from lqs_megatron.parallel.dims import ParallelDims

Vector = dict[str, torch.Tensor]


def _is_sharded(param: nn.Parameter) -> bool:
    return getattr(param, "tp_dim", None) is not None


class ParamSpace:
    """The trainable parameters of ``model`` (first occurrence of each shared tensor) and the layout."""

    def __init__(self, model: nn.Module, dims: ParallelDims):
        self.model = model
        self.dims = dims
        self.params: dict[str, nn.Parameter] = dict(model.named_parameters())  # shared tensors listed once
        # A replicated parameter is summed on tp rank 0 only; sharded ones on every tp rank.
        self.counted = {n: _is_sharded(p) or dims.tp_rank == 0 for n, p in self.params.items()}
        self.sharded = {n: _is_sharded(p) for n, p in self.params.items()}

    def zeros(self, dtype: torch.dtype) -> Vector:
        return {n: torch.zeros_like(p, dtype=dtype) for n, p in self.params.items()}

    def copy_of_params(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Vector:
        return {
            n: p.detach().to(dtype=dtype or p.dtype, device=device or p.device, copy=True)
            for n, p in self.params.items()
        }

    @torch.no_grad()
    def load_into_model(self, theta: Vector) -> None:
        """Copy ``theta`` into the model's parameters (cast to their dtype/device)."""
        for n, p in self.params.items():
            p.copy_(theta[n])

    # -- inner products over the whole model (float64 scalars, identical on every rank) --

    def dots(self, pairs: Iterable[tuple[Vector, Vector]]) -> list[float]:
        """``<a, b>`` for each pair, with one tp all-reduce for all of them."""
        pairs = list(pairs)
        dev = next(iter(self.params.values())).device
        acc = torch.zeros(len(pairs), dtype=torch.float64, device=dev)
        for k, (a, b) in enumerate(pairs):
            for n in self.params:
                if self.counted[n]:
                    acc[k] += torch.sum(a[n].double() * b[n].double())
        self.dims.all_reduce(acc, group="tp")
        return acc.tolist()

    def norm(self, a: Vector) -> float:
        return self.dots([(a, a)])[0] ** 0.5

    def all_reduce_dp(self, vec: Vector) -> Vector:
        """Sum ``vec`` over the data-parallel ranks, in place, through one flat buffer per dtype."""
        if self.dims.dp == 1 or self.dims.dp_group is None:
            return vec
        flat = torch.cat([vec[n].reshape(-1) for n in self.params])
        self.dims.all_reduce(flat, group="dp")
        off = 0
        for n in self.params:
            k = vec[n].numel()
            vec[n].copy_(flat[off : off + k].view_as(vec[n]))
            off += k
        return vec


def save_vector(path: str | os.PathLike, vec: Vector) -> None:
    """Safetensors file of ``vec`` (written by the caller inside an atomic context)."""
    from safetensors.torch import save_file

    save_file({n: t.detach().cpu().contiguous() for n, t in vec.items()}, str(path))


def load_vector(path: str | os.PathLike, device: torch.device | str = "cpu") -> Vector:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))
