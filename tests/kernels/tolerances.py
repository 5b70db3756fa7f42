"""The one tolerance table of the kernel tests: relative error against a float64 truth computed from the
same (rounded) inputs, per quantity and input dtype.

- ``loss``: per-example losses and logsumexp (the logits are exact products accumulated in float32);
- ``grad``: gradients wrt the hidden states and the head weight, and the LM head's statistics: for
  bf16 inputs ``dlogits`` is rounded to bf16 before those GEMMs, as a bf16 backward does;
- ``stats``: ``<G_n, Lambda>`` and ``|G_n|^2`` of a layer from given inputs (float32 accumulation);
  ``stats_atol`` is the absolute slack of the dot products as a fraction of their largest value.

``GPU`` holds the compiled kernels' bounds (``tests/kernels/test_gpu.py``): larger shapes, the GPU's
approximate ``exp`` and its tensor-core accumulation order; ``model`` bounds the whole model's
statistics (``ExampleStats`` on CUDA) against float64 ``torch.func``, where bf16 autocast also rounds
the forward's activations.
"""

from __future__ import annotations

import torch

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64

RTOL = {
    "loss": {F32: 1e-5, BF16: 1e-5, F64: 1e-12},
    "grad": {F32: 1e-4, BF16: 2e-2, F64: 1e-10},
    "stats": {F32: 1e-4, BF16: 1e-4, F64: 1e-10},
    "stats_atol": {F32: 1e-6, BF16: 1e-6, F64: 1e-12},
}
GPU = {
    "loss": {F32: 1e-4, BF16: 1e-4},
    "grad": {F32: 1e-4, BF16: 2e-2},
    "stats": {F32: 1e-4, BF16: 1e-4},
    "model": {F32: 1e-3, BF16: 5e-2},
}


def rtol(quantity: str, dtype: torch.dtype, gpu: bool = False) -> float:
    """The bound for ``quantity`` (a key of :data:`RTOL`) with ``dtype`` inputs; ``gpu``: compiled kernels."""
    return (GPU if gpu else RTOL)[quantity][dtype]
