"""LM head per-example statistics against float64 ``vmap(grad)`` of the per-example losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from lqs_megatron.kernels.lm_head_stats import lm_head_grad_stats, lm_head_grad_stats_reference
from lqs_megatron.kernels.per_example_loss import per_example_loss
from tests.kernels.test_per_example_loss import _problem
from tests.utils import assert_close, rel_err


def per_example_head_grads(hidden, weight, labels, mask, vocab_size):
    """``G_n = d l_n / d W`` for every example, float64, through materialised logits."""

    def loss(w, h, y, m):
        logits = h @ w[:vocab_size].T
        ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        return (ce * m).sum() / m.sum()

    return vmap(grad(loss), in_dims=(None, 0, 0, 0))(weight.double(), hidden.double(), labels, mask.double())


CASES = [
    pytest.param(torch.float32, "torch", "direct", 1e-4, id="torch-float32-direct"),
    pytest.param(torch.float32, "torch", "ghost", 1e-4, id="torch-float32-ghost"),
    pytest.param(torch.float64, "torch", "auto", 1e-10, id="torch-float64-auto"),
    pytest.param(torch.float32, "triton", "auto", 1e-4, id="triton-float32"),
    pytest.param(torch.bfloat16, "torch", "auto", 1e-4, id="torch-bfloat16"),
    # bf16 Triton: dlogits rounded to bf16 before the tensor-core GEMM, as in a bf16 backward
    pytest.param(torch.bfloat16, "triton", "auto", 2e-2, id="triton-bfloat16"),
]


@pytest.mark.parametrize("dtype,backend,method,rtol", CASES)
@pytest.mark.parametrize("B,T,d,V,vocab_size", [(3, 13, 40, 70, 61), (2, 5, 17, 131, 131)])
def test_lm_head_stats_match_vmap_grad(B, T, d, V, vocab_size, dtype, backend, method, rtol):
    hidden, weight, labels, mask = _problem(B, T, d, V, vocab_size, dtype)
    lam = torch.randn(V, d, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    G = per_example_head_grads(hidden, weight, labels, mask, vocab_size)
    tdot, tsq = (G * lam.double()).sum((1, 2)), G.square().sum((1, 2))
    _, lse = per_example_loss(hidden, weight, labels, mask, vocab_size=vocab_size, return_lse=True, backend=backend)
    dot, sq = lm_head_grad_stats(hidden, weight, labels, mask, lam, lse, vocab_size=vocab_size, method=method,
                                 backend=backend)  # fmt: skip
    assert dot.dtype == sq.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(dot, tdot) < rtol and rel_err(sq, tsq) < rtol, (rel_err(dot, tdot), rel_err(sq, tsq))
    if dtype != torch.bfloat16 or backend == "torch":
        assert_close(dot, tdot, rtol=rtol, atol=rtol * float(tdot.abs().max()), name="dot")
        assert_close(sq, tsq, rtol=rtol, name="sqnorm")
    if backend == "torch" and method != "auto":  # several vocabulary chunks: partial sums and Gram accumulation
        dot, sq = lm_head_grad_stats_reference(hidden, weight, labels, mask, lam, lse, vocab_size, method=method,
                                               chunk_bytes=B * T * 7 * 8)  # fmt: skip
        assert_close(dot, tdot, rtol=rtol, atol=rtol * float(tdot.abs().max()), name="chunked dot")
        assert_close(sq, tsq, rtol=rtol, name="chunked sqnorm")


def test_ghost_is_torch_only():
    hidden, weight, labels, mask = _problem(2, 5, 16, 20, 20, torch.float32)
    with pytest.raises(ValueError, match="torch-only"):
        lm_head_grad_stats(hidden, weight, labels, mask, weight, torch.zeros(2, 5), method="ghost", backend="triton")
