"""The compiled Triton kernels on a CUDA device against the torch references (skipped without CUDA).

Shapes larger than the interpreter tests, crossing several blocks and chunks; bf16 and float32.
The references run in float64 on the same device. Last, the annotation engine end to end on CUDA
(float32 and bf16 autocast) against float64 ``torch.func`` per-example gradients on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from lqs_megatron.kernels import (
    grad_stats_embedding,
    grad_stats_linear,
    grad_stats_norm,
    lm_head_loss_and_stats,
    per_example_loss,
)
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.parallel.dims import ParallelDims
from tests.kernels.tolerances import rtol
from tests.lqs.test_stats import random_batch, random_lambda, tiny_model, torch_func_stats
from tests.utils import rel_err

pytestmark = pytest.mark.gpu
# (dtype, stats/loss tol, gradient tol): the compiled kernels' column of the shared table
DTYPES = [
    (dt, max(rtol("loss", dt, gpu=True), rtol("stats", dt, gpu=True)), rtol("grad", dt, gpu=True))
    for dt in (torch.float32, torch.bfloat16)
]


def _mask(B, T, device):
    lengths = torch.randint(T // 2, T + 1, (B,), device=device)
    return (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()


@pytest.mark.parametrize("dtype,tol,_", DTYPES)
@pytest.mark.parametrize("method", ["direct", "ghost"])
def test_linear_stats_cuda(dtype, tol, _, method):
    B, T, d_in, d_out = 5, 301, 333, 517
    A = torch.randn(B, T, d_in, device="cuda", dtype=dtype)
    D = torch.randn(B, T, d_out, device="cuda", dtype=dtype)
    lam = torch.randn(d_out, d_in, device="cuda")
    mask = _mask(B, T, "cuda")
    out = grad_stats_linear(A, D, lam, mask, method=method, backend="triton")
    ref = grad_stats_linear(A.double(), D.double(), lam.double(), mask, method="direct", backend="torch")
    assert rel_err(out[0], ref[0]) < tol and rel_err(out[1], ref[1]) < tol


@pytest.mark.parametrize("dtype,tol,_", DTYPES)
def test_embedding_and_norm_stats_cuda(dtype, tol, _):
    B, T, d, V = 4, 257, 300, 1000
    ids = torch.randint(0, 50, (B, T), device="cuda")
    D = torch.randn(B, T, d, device="cuda", dtype=dtype)
    lam = torch.randn(V, d, device="cuda")
    mask = _mask(B, T, "cuda")
    out = grad_stats_embedding(ids, D, lam[10:], vocab_start=10, mask=mask, backend="triton")
    ref = grad_stats_embedding(ids, D.double(), lam[10:].double(), vocab_start=10, mask=mask, backend="torch")
    assert rel_err(out[0], ref[0]) < tol and rel_err(out[1], ref[1]) < tol
    xhat = torch.randn(B, T, d, device="cuda", dtype=dtype)
    out = grad_stats_norm(xhat, D, lam[0], mask, backend="triton")
    ref = grad_stats_norm(xhat.double(), D.double(), lam[0].double(), mask, backend="torch")
    assert rel_err(out[0], ref[0]) < tol and rel_err(out[1], ref[1]) < tol


@pytest.mark.parametrize("dtype,tol,grad_tol", DTYPES)
def test_per_example_loss_cuda(dtype, tol, grad_tol):
    B, T, d, V, vocab = 3, 517, 256, 5003, 4999
    h = torch.randn(B, T, d, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(V, d, device="cuda", dtype=dtype) / d**0.5).requires_grad_()
    labels = torch.randint(0, vocab, (B, T), device="cuda")
    mask = _mask(B, T, "cuda")
    loss, lse = per_example_loss(h, w, labels, mask, vocab_size=vocab, return_lse=True, backend="triton")
    gh, gw = torch.autograd.grad(loss.sum(), [h, w])
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref, ref_lse = per_example_loss(h64, w64, labels, mask, vocab_size=vocab, return_lse=True, backend="torch")
    rgh, rgw = torch.autograd.grad(ref.sum(), [h64, w64])
    assert rel_err(loss, ref) < tol and rel_err(lse, ref_lse) < tol
    assert rel_err(gh, rgh) < grad_tol and rel_err(gw, rgw) < grad_tol


@pytest.mark.parametrize("dtype,tol,grad_tol", DTYPES)
def test_fused_head_loss_and_stats_cuda(dtype, tol, grad_tol):
    """Several chunks of whole examples (4, 4, 3), vocabulary padding rows, against float64."""
    B, T, d, V, vocab = 11, 517, 2048, 5003, 4999
    h = torch.randn(B, T, d, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(V, d, device="cuda", dtype=dtype) / d**0.5
    labels = torch.randint(0, vocab, (B, T), device="cuda")
    mask = _mask(B, T, "cuda")
    lam = torch.randn(V, d, device="cuda")
    losses, dot, sq, lse = lm_head_loss_and_stats(h, w, labels, mask, lam, vocab, backend="triton")
    (gh,) = torch.autograd.grad(losses.sum(), [h])
    h64 = h.detach().double().requires_grad_()
    r_losses, r_dot, r_sq, r_lse = lm_head_loss_and_stats(
        h64, w.double(), labels, mask, lam.double(), vocab, backend="torch"
    )
    (r_gh,) = torch.autograd.grad(r_losses.sum(), [h64])
    assert rel_err(losses.detach(), r_losses.detach()) < tol and rel_err(lse, r_lse) < tol
    assert rel_err(gh, r_gh) < grad_tol
    assert rel_err(dot, r_dot) < grad_tol and rel_err(sq, r_sq) < grad_tol


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_annotation_stats_on_cuda_match_torch_func(amp):
    """``ExampleStats`` (hooks + the Triton kernels) on CUDA, as ``lqs annotate`` runs it, vs float64 truth."""
    batch = random_batch([57, 3, 64, 30, 64, 11], seed=3)
    lam = random_lambda(tiny_model(), seed=3)
    ref_dot, ref_sq = torch_func_stats(tiny_model(torch.float64), batch, lam)
    model = tiny_model().cuda()
    cuda_batch = batch.to(torch.device("cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        dot, sq = ExampleStats(model, ParallelDims(device=torch.device("cuda")))(
            cuda_batch, {n: t.float().cuda() for n, t in lam.items()}
        )
    tol = rtol("model", torch.bfloat16 if amp else torch.float32, gpu=True)
    assert rel_err(sq.cpu(), ref_sq) < tol and rel_err(dot.cpu(), ref_dot) < tol
