"""Triton kernels of the LQS annotation engine, each beside its plain torch reference.

Every public function takes ``backend="auto" | "triton" | "torch"``: Triton on CUDA tensors, the
reference on CPU tensors (see ``_dispatch.py``).

- :mod:`.per_example_loss`: fused linear + cross-entropy, one mean loss per example (vocab-parallel).
- :mod:`.lm_head_stats`: the LM head's per-example losses, ``dhidden`` and ``<G_n, Lambda>``, ``|G_n|^2``
  in one fused pass (composes the two modules below).
- :mod:`.grad_stats`: the same statistics for linear layers (direct or ghost), embeddings, norm weights.
"""

from lqs_megatron.kernels.grad_stats import (
    choose_method,
    grad_stats_embedding,
    grad_stats_embedding_reference,
    grad_stats_linear,
    grad_stats_linear_reference,
    grad_stats_norm,
    grad_stats_norm_reference,
)
from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats
from lqs_megatron.kernels.per_example_loss import per_example_loss, per_example_loss_reference

__all__ = [
    "choose_method",
    "grad_stats_embedding",
    "grad_stats_embedding_reference",
    "grad_stats_linear",
    "grad_stats_linear_reference",
    "grad_stats_norm",
    "grad_stats_norm_reference",
    "lm_head_loss_and_stats",
    "per_example_loss",
    "per_example_loss_reference",
]
