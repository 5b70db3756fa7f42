"""The per-example gradient statistics ops under one name, for existing imports.

Each op lives in its own module (kernel, launcher, torch reference): :mod:`.linear_stats`
(direct or ghost, :func:`choose_method`), :mod:`.embedding_stats`, :mod:`.norm_stats`.
New code imports them from :mod:`lqs_megatron.kernels`.
"""

from lqs_megatron.kernels.embedding_stats import grad_stats_embedding, grad_stats_embedding_reference
from lqs_megatron.kernels.linear_stats import (
    choose_method,
    grad_stats_linear,
    grad_stats_linear_reference,
)
from lqs_megatron.kernels.norm_stats import grad_stats_norm, grad_stats_norm_reference

__all__ = [
    "choose_method",
    "grad_stats_embedding",
    "grad_stats_embedding_reference",
    "grad_stats_linear",
    "grad_stats_linear_reference",
    "grad_stats_norm",
    "grad_stats_norm_reference",
]
