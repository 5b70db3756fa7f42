"""The language-model loss of a (possibly tensor-parallel) decoder: one mean CE per example.

``per_example_lm_loss(model, input_ids, labels, loss_mask) -> [B]`` is
``l(x) = sum_t m_t CE_t / sum_t m_t`` (``docs/algorithm.md``), computed by the fused,
chunked, vocab-parallel kernel ``lqs_megatron.kernels.per_example_loss`` without ever
holding ``B x T x V`` logits. The hidden states enter the tensor-parallel region
(``copy_to_region``) so their gradient is all-reduced over the tp group; padded vocabulary
rows are excluded from the softmax through ``vocab_size``.

Pretraining minimises the mean over examples of these per-example means (packed samples
have every position real, so that is the token mean); evaluation reports the same.
"""

from __future__ import annotations

import torch
from torch import nn

from lqs_megatron.kernels.per_example_loss import per_example_loss
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.parallel.mappings import copy_to_region, reduce_from_region


def per_example_lm_loss(
    model: Decoder,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``[B]`` mean token cross-entropy of each example (float32), for dense or parallelized models."""
    hidden = model(input_ids, position_ids)
    head = model.output
    group = getattr(head, "tp_group", None)
    weight = head.weight
    if torch.is_autocast_enabled(hidden.device.type):  # the head GEMMs in the autocast dtype (bf16 on GPU)
        dt = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dt), weight.to(dt)
    return per_example_loss(
        copy_to_region(hidden, group),
        weight,
        labels,
        loss_mask,
        vocab_size=model.config.vocab_size,
        vocab_start=getattr(head, "vocab_start", 0),
        tp_group=group,
        backend=backend,
        tp_reduce=reduce_from_region,
    )


class CausalLMLoss(nn.Module):
    """The decoder with its loss in ``forward`` (what DDP / torch.compile wrap): ``-> [B]`` losses."""

    def __init__(self, model: Decoder, backend: str = "auto"):
        super().__init__()
        self.model = model
        self.backend = backend

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        return per_example_lm_loss(self.model, input_ids, labels, loss_mask, backend=self.backend)
