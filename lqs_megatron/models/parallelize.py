"""Apply tensor parallelism to a full :class:`Decoder`, in place (the decoder itself knows nothing of it).

Megatron's split: ``wq``/``wk``/``wv`` and the SwiGLU ``w1``/``w3`` are column-parallel
(whole heads, whole MLP columns per rank, their biases split alike), ``wo`` and ``w2``
row-parallel (a bias replicated, added once after the all-reduce), the embedding
vocab-parallel and the output head column-parallel over the vocabulary. So ``tp`` must
divide ``num_heads``, ``num_kv_heads`` and ``intermediate_size``. The vocabulary is padded
to a multiple of ``tp * make_vocab_size_divisible_by``; padded rows are zero, never looked
up, and excluded from the softmax by the loss (``vocab_size`` argument).

The full model is initialised first and then sharded, so tp=2 computes what tp=1 does.
"""

from __future__ import annotations

import torch
from torch import nn

from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
)

COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROW = ("attention.wo", "feed_forward.w2")
VOCAB = ("tok_embeddings", "output")


def tp_dim_of(name: str) -> int | None:
    """The dimension along which parameter ``name`` is split under tensor parallelism (None: replicated).

    A column-parallel layer's bias is split with its output rows; a row-parallel layer's bias is
    added after the all-reduce, so it is replicated (counted once, like the norm weights)."""
    if name.endswith(".bias"):
        return 0 if name.removesuffix(".bias").endswith(COLUMN) else None
    stem = name.removesuffix(".weight")
    if stem in VOCAB or stem.endswith(COLUMN):
        return 0
    if stem.endswith(ROW):
        return 1
    return None


def padded_vocab_size(vocab_size: int, tp: int = 1, make_vocab_size_divisible_by: int = 1) -> int:
    """``vocab_size`` rounded up to a multiple of ``tp * make_vocab_size_divisible_by``."""
    m = tp * max(make_vocab_size_divisible_by, 1)
    return -(-vocab_size // m) * m


def check_tp(config: ModelConfig, tp: int, name: str = "model") -> None:
    """Raise :class:`LQSError` naming ``--tp`` when the model cannot be split ``tp`` ways."""
    if tp < 1:
        raise LQSError(f"--tp must be >= 1, got {tp}")
    for field in ("num_heads", "num_kv_heads", "intermediate_size"):
        v = getattr(config, field)
        if v % tp:
            raise LQSError(
                f"--tp {tp} does not divide {field} = {v} of {name}; "
                f"tensor parallelism splits whole heads and MLP columns (choose a tp that divides it)"
            )


VOCAB_ROWS = ("tok_embeddings.weight", "output.weight")
"""The tensors with one row per (padded) vocabulary entry."""


def fit_vocab_rows(t: torch.Tensor, vocab_size: int, rows: int) -> torch.Tensor:
    """A full ``[padded, ...]`` vocabulary tensor with ``rows`` rows: its first ``vocab_size`` rows,
    then zero rows (padded rows are zero in the weights and in their AdamW moments alike)."""
    t = t[:vocab_size]
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def resize_vocab(model: Decoder, rows: int) -> Decoder:
    """Give a dense model ``rows`` embedding/head rows: zero rows appended, or padding rows dropped."""
    if rows < model.config.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary below vocab_size {model.config.vocab_size}")
    if rows == model.padded_vocab_size:
        return model

    def fit(w: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(fit_vocab_rows(w.detach(), model.config.vocab_size, rows))

    model.tok_embeddings.weight = fit(model.tok_embeddings.weight)
    model.tok_embeddings.num_embeddings = rows
    if model.config.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    else:
        model.output.weight = fit(model.output.weight)
    model.output.out_features = rows
    model.padded_vocab_size = rows
    return model


def parallelize(model: Decoder, dims: ParallelDims, make_vocab_size_divisible_by: int = 1) -> Decoder:
    """Shard a full (dense, initialised) decoder for ``dims.tp``, in place; returns it.

    With ``dims.tp == 1`` the layers are swapped for their parallel twins with no group,
    which compute exactly what the dense layers do (uniform attributes for the loss and
    the LQS hooks: ``output.vocab_start``, ``tp_group``).
    """
    cfg = model.config
    check_tp(cfg, dims.tp)
    if isinstance(model.output, ParallelLMHead):
        raise ValueError("model is already parallelized")
    resize_vocab(model, padded_vocab_size(cfg.vocab_size, dims.tp, make_vocab_size_divisible_by))
    group = dims.tp_group if dims.tp > 1 else None
    for layer in model.layers:  # the swaps are the COLUMN / ROW tables that tp_dim_of reads
        for path in COLUMN + ROW:
            owner, attr = path.split(".")
            parent = getattr(layer, owner)
            twin = ColumnParallelLinear if path in COLUMN else RowParallelLinear
            setattr(parent, attr, twin.from_dense(getattr(parent, attr), group))
    model.tok_embeddings = VocabParallelEmbedding.from_dense(model.tok_embeddings, group)
    model.output = ParallelLMHead.from_dense(model.output, group)
    if cfg.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model


def tp_size_of(model: Decoder) -> int:
    """Tensor-parallel size a (parallelized or dense) model was built for."""
    return getattr(model.output, "tp_size", 1)


def shard_state_dict(full: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's slices of a full (dense, padded) state dict (a resharding resume: training/checkpoint.py)."""
    out = {}
    for k, v in full.items():
        d = tp_dim_of(k)
        out[k] = v if d is None or tp == 1 else v.chunk(tp, dim=d)[rank]
    return out


def merge_state_dicts(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The full state dict from every tp rank's shard (rank order); replicated tensors from rank 0."""
    out = {}
    for k, v in shards[0].items():
        d = tp_dim_of(k)
        out[k] = v if d is None or len(shards) == 1 else torch.cat([s[k] for s in shards], dim=d)
    return out
