"""Megatron-style tensor-parallel layers, each a subclass of the dense layer it replaces.

Each holds only this rank's shard as ``.weight`` (so ``nn.Linear`` / ``nn.Embedding`` code,
optimizers and module hooks keep working) and owns its communication through
:mod:`lqs_megatron.parallel.mappings`. What a forward hook sees (the LQS per-example
statistics rely on it):

=========================  ==============================  ====================================
layer                      hook ``input``                  hook ``output``
=========================  ==============================  ====================================
``ColumnParallelLinear``   the full (replicated) input     this rank's output shard
                                                           (all of it with ``gather_output``)
``RowParallelLinear``      this rank's input shard         the full output, all-reduced
``VocabParallelEmbedding`` token ids                       the full embeddings, all-reduced
``ParallelLMHead``         the full hidden states          this rank's logits shard, columns
                                                           ``[vocab_start, vocab_end)``
=========================  ==============================  ====================================

Every module exposes ``tp_group`` (None on one rank), ``tp_size``, ``tp_rank``; every
sharded weight carries ``weight.tp_dim`` (the dimension it is split along: 0 for
column/vocabulary splits, 1 for row splits). With ``tp_group=None`` each layer is
exactly its dense parent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lqs_megatron.parallel.mappings import (
    copy_to_region,
    gather_from_region,
    group_rank,
    group_size,
    reduce_from_region,
)


def _shard(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    if t.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {t.shape[dim]} is not divisible by tp {size}")
    return t.chunk(size, dim=dim)[rank].detach().clone()


def _mark(p: nn.Parameter, dim: int) -> nn.Parameter:
    p.tp_dim = dim
    return p


class ColumnParallelLinear(nn.Linear):
    """``y = x A^T`` with ``A`` split by output rows: rank ``r`` holds ``A[r*n/tp:(r+1)*n/tp]``.

    Forward: the input enters the tensor-parallel region (its gradient is all-reduced in
    backward), the output stays sharded unless ``gather_output``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tp_group=None,
        bias: bool = False,
        gather_output: bool = False,
        device=None,
        dtype=None,
    ):
        self.tp_size, self.tp_rank = group_size(tp_group), group_rank(tp_group)
        if out_features % self.tp_size:
            raise ValueError(f"out_features {out_features} is not divisible by tp {self.tp_size}")
        super().__init__(in_features, out_features // self.tp_size, bias=bias, device=device, dtype=dtype)
        self.tp_group = tp_group
        self.full_out_features = out_features
        self.gather_output = gather_output
        _mark(self.weight, 0)
        if self.bias is not None:
            _mark(self.bias, 0)

    @classmethod
    def from_dense(cls, dense: nn.Linear, tp_group=None, **kw) -> ColumnParallelLinear:
        """This rank's shard of a dense ``nn.Linear`` (weights copied)."""
        m = cls(dense.in_features, dense.out_features, tp_group, bias=dense.bias is not None, device="meta", **kw)
        m.weight = _mark(nn.Parameter(_shard(dense.weight, 0, m.tp_rank, m.tp_size)), 0)
        if dense.bias is not None:
            m.bias = _mark(nn.Parameter(_shard(dense.bias, 0, m.tp_rank, m.tp_size)), 0)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_region(x, self.tp_group), self.weight, self.bias)
        return self.gather(y) if self.gather_output else y

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """All ranks' output shards concatenated along the last dimension."""
        return gather_from_region(y, self.tp_group)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_size}, rank={self.tp_rank}, gather_output={self.gather_output}"


class ParallelLMHead(ColumnParallelLinear):
    """The output head, column-parallel over the (padded) vocabulary: rows ``[vocab_start, vocab_end)``."""

    @property
    def vocab_start(self) -> int:
        return self.tp_rank * self.out_features

    @property
    def vocab_end(self) -> int:
        return self.vocab_start + self.out_features


class RowParallelLinear(nn.Linear):
    """``y = x A^T`` with ``A`` split by input columns: rank ``r`` holds ``A[:, r*k/tp:(r+1)*k/tp]``.

    The input is already sharded (the output of a column-parallel layer); the partial
    products are summed with an all-reduce (identity in backward). A bias is added once,
    after the reduction.
    """

    def __init__(self, in_features: int, out_features: int, tp_group=None, bias: bool = False, device=None, dtype=None):
        self.tp_size, self.tp_rank = group_size(tp_group), group_rank(tp_group)
        if in_features % self.tp_size:
            raise ValueError(f"in_features {in_features} is not divisible by tp {self.tp_size}")
        super().__init__(in_features // self.tp_size, out_features, bias=bias, device=device, dtype=dtype)
        self.tp_group = tp_group
        self.full_in_features = in_features
        _mark(self.weight, 1)

    @classmethod
    def from_dense(cls, dense: nn.Linear, tp_group=None) -> RowParallelLinear:
        m = cls(dense.in_features, dense.out_features, tp_group, bias=dense.bias is not None, device="meta")
        m.weight = _mark(nn.Parameter(_shard(dense.weight, 1, m.tp_rank, m.tp_size)), 1)
        if dense.bias is not None:
            m.bias = nn.Parameter(dense.bias.detach().clone())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_region(F.linear(x, self.weight), self.tp_group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_size}, rank={self.tp_rank}"


class VocabParallelEmbedding(nn.Embedding):
    """Embedding with the vocabulary split by rows: this rank holds rows ``[vocab_start, vocab_end)``.

    Ids outside the local range look up nothing (zeros); the all-reduce sums the ranks'
    contributions, so every rank returns the full embeddings.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group=None, device=None, dtype=None, _weight=None):
        self.tp_size, self.tp_rank = group_size(tp_group), group_rank(tp_group)
        if num_embeddings % self.tp_size:
            raise ValueError(f"num_embeddings {num_embeddings} is not divisible by tp {self.tp_size}")
        local = num_embeddings // self.tp_size
        super().__init__(local, embedding_dim, device=device, dtype=dtype, _weight=_weight)
        self.tp_group = tp_group
        self.full_num_embeddings = num_embeddings
        self.vocab_start = self.tp_rank * self.num_embeddings
        self.vocab_end = self.vocab_start + self.num_embeddings
        _mark(self.weight, 0)  # nn.Embedding wraps _weight in a new Parameter: mark that one

    @classmethod
    def from_dense(cls, dense: nn.Embedding, tp_group=None) -> VocabParallelEmbedding:
        size, rank = group_size(tp_group), group_rank(tp_group)
        shard = _shard(dense.weight, 0, rank, size)
        return cls(dense.num_embeddings, dense.embedding_dim, tp_group, _weight=shard)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_region(out, self.tp_group)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_size}, rows=[{self.vocab_start}, {self.vocab_end})"
