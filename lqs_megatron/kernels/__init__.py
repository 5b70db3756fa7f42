"""Triton kernels of the LQS annotation engine: one op per module, each with its Triton kernel(s),
launcher, autograd Function (where the op is differentiated) and plain torch reference of the same
signature (``*_reference``).

Every public function takes ``backend="auto" | "triton" | "torch"``: Triton on CUDA tensors, the
reference on CPU tensors (see ``_dispatch.py``). Launch configurations are pure functions of the
shapes (``*_launch`` returning a :class:`~._launch.Launch`), compiled ahead of time for A100/H100 by
the ``triton_compile`` tests. The package imports nothing from the rest of ``lqs_megatron``.

- :mod:`.per_example_loss`: fused linear + cross-entropy, one mean loss per example (vocab-parallel).
- :mod:`.lm_head_stats`: the LM head's per-example losses, ``dhidden`` and ``<G_n, Lambda>``, ``|G_n|^2``
  in one fused pass (composes the row pieces of ``per_example_loss`` and ``grad_stats_linear``).
- :mod:`.linear_stats`: those statistics for a linear layer (direct or ghost).
- :mod:`.embedding_stats`: for an embedding table (repeated token ids summed first).
- :mod:`.norm_stats`: for a norm's elementwise weight.
"""

from lqs_megatron.kernels.embedding_stats import grad_stats_embedding, grad_stats_embedding_reference
from lqs_megatron.kernels.linear_stats import choose_method, grad_stats_linear, grad_stats_linear_reference
from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats, lm_head_loss_and_stats_reference
from lqs_megatron.kernels.norm_stats import grad_stats_norm, grad_stats_norm_reference
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
    "lm_head_loss_and_stats_reference",
    "per_example_loss",
    "per_example_loss_reference",
]
