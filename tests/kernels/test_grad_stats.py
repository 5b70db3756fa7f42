"""Per-example gradient statistics (linear, embedding, norm) against torch.func per-example gradients.

The truth is float64 ``vmap(grad)`` of actual per-example losses; the kernels see only the layer's
inputs and the gradients wrt its outputs. Every case runs the torch reference and the Triton kernels
(under ``TRITON_INTERPRET=1`` on the CPU), on odd shapes that are not multiples of any block size,
with random padding masks (examples of different lengths).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from lqs_megatron.kernels import choose_method, grad_stats_embedding, grad_stats_linear, grad_stats_norm
from lqs_megatron.kernels.linear_stats import linear_direct_forward, ragged_rows
from tests.kernels import tolerances
from tests.utils import assert_close, rel_err

# (input dtype, rtol, atol as a fraction of the largest expected value); the truth is computed in
# float64 from the same (rounded) inputs, so 16-bit inputs only test the float32 accumulation.
DTYPES = [
    (dt, tolerances.rtol("stats", dt), tolerances.rtol("stats_atol", dt))
    for dt in (torch.float32, torch.bfloat16, torch.float64)
]
F32_TOL = (tolerances.rtol("stats", torch.float32), tolerances.rtol("stats_atol", torch.float32))
BACKENDS = ["torch", "triton"]


def _cases():
    for dtype, rtol, atol in DTYPES:
        for backend in BACKENDS:
            if backend == "triton" and dtype == torch.float64:
                continue  # the Triton kernels accumulate in float32; float64 is the reference's
            yield pytest.param(dtype, rtol, atol, backend, id=f"{backend}-{str(dtype)[6:]}")


def _mask(B, T):
    """Random 0/1 mask: right padding of random length plus a few holes; every example keeps a position."""
    lengths = torch.randint(T // 2, T + 1, (B,))
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    mask *= (torch.rand(B, T) > 0.15).double()
    mask[:, 0] = 1
    return mask


def _check(actual, expected, rtol, atol, name):
    dot, sq = actual
    tdot, tsq = expected
    assert_close(dot, tdot, rtol=rtol, atol=atol * float(tdot.abs().max()), name=f"{name} dot")
    assert_close(sq, tsq, rtol=rtol, atol=0.0, name=f"{name} sqnorm")
    assert rel_err(dot, tdot) < rtol and rel_err(sq, tsq) < rtol


def _linear_problem(B, T, d_in, d_out, dtype):
    """Inputs A, per-example output gradients D of l_n(W) = sum_t m_t c_t . tanh(W a_t), and the truth."""
    A = torch.randn(B, T, d_in, dtype=torch.float64).to(dtype).double()
    W = torch.randn(d_out, d_in, dtype=torch.float64) / d_in**0.5
    C = torch.randn(B, T, d_out, dtype=torch.float64)
    mask = _mask(B, T)
    lam = torch.randn(d_out, d_in, dtype=torch.float64)

    def loss(w, a, c, m):  # one example
        return (m[:, None] * c * torch.tanh(a @ w.T)).sum()

    G = vmap(grad(loss), in_dims=(None, 0, 0, 0))(W, A, C, mask)  # [B, d_out, d_in]
    Y = A @ W.T
    D = mask[..., None] * C * (1 - torch.tanh(Y) ** 2)
    D[mask == 0] = torch.randn(int((mask == 0).sum()), d_out, dtype=torch.float64)  # junk the mask must hide
    truth = ((G * lam).sum((1, 2)), G.square().sum((1, 2)))
    return A.to(dtype), D.to(dtype), lam.to(torch.float64 if dtype == torch.float64 else torch.float32), mask, truth


@pytest.mark.parametrize("dtype,rtol,atol,backend", list(_cases()))
@pytest.mark.parametrize("method", ["direct", "ghost", "auto"])
@pytest.mark.parametrize("B,T,d_in,d_out", [(3, 13, 37, 29), (2, 40, 19, 33)])
def test_linear_matches_vmap_grad(B, T, d_in, d_out, method, dtype, rtol, atol, backend):
    A, D, lam, mask, truth = _linear_problem(B, T, d_in, d_out, dtype)
    if dtype == torch.bfloat16:  # the kernels see bf16 D: the truth must too
        truth = _truth_from_inputs(A, D, lam, mask)
    out = grad_stats_linear(A, D, lam, mask=mask, method=method, backend=backend)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out[0].dtype == expected_dtype and out[1].dtype == expected_dtype
    _check(out, truth, rtol, atol, f"linear {method}/{backend}")


def _truth_from_inputs(A, D, lam, mask):
    G = torch.einsum("bto,bti->boi", D.double() * mask[..., None], A.double())
    return (G * lam.double()).sum((1, 2)), G.square().sum((1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_without_mask_and_d_zero_at_padding(backend):
    """No mask: padding rows have D = 0 (as a real backward gives) while A holds junk there."""
    A, D, lam, mask, truth = _linear_problem(3, 11, 21, 35, torch.float32)
    D = D * mask[..., None].float()
    for method in ("direct", "ghost"):
        _check(grad_stats_linear(A, D, lam, method=method, backend=backend), truth, *F32_TOL, method)


def test_linear_triton_several_tiles_and_example_groups():
    """d_in, d_out over one 64-wide tile each (2 x 2 tiles), 2 position blocks, one example per program."""
    A, D, lam, mask, truth = _linear_problem(3, 37, 70, 90, torch.float32)
    for method in ("direct", "ghost"):
        _check(grad_stats_linear(A, D, lam, mask, method=method, backend="triton"), truth, *F32_TOL, method)
    row_start, row_count, _ = ragged_rows(mask, 3, 37, A.device)
    out = linear_direct_forward(
        A.reshape(-1, 70),
        D.reshape(-1, 90),
        lam,
        row_start,
        row_count,
        mask.reshape(-1).float(),
        examples_per_program=1,
    )
    _check(out, truth, *F32_TOL, "direct, one example per program")


def test_choose_method_rule():
    assert choose_method(16, 64, 64) == "ghost"  # 256 < 4096
    assert choose_method(128, 64, 64) == "direct"  # 16384 >= 4096
    assert choose_method(64, 64, 64) == "direct"
    # the CPU measurements the threshold is tuned on (docs/benchmarks.md)
    assert choose_method(128, 256, 256) == choose_method(128, 256, 768) == "direct"  # 8M model
    assert choose_method(128, 256, 8192) == "direct"  # 8M LM head
    assert choose_method(128, 512, 1536) == choose_method(128, 512, 32000) == "ghost"  # 64M MLP, head
    assert choose_method(64, 256, 256) == choose_method(128, 768, 3072) == "ghost"
    assert choose_method(256, 256, 256) == choose_method(512, 256, 256) == "direct"
    assert choose_method(1024, 4096, 4096, fused=True) == "direct"
    assert choose_method(2, 4096, 4096, fused=True) == "direct"


def test_bad_shapes_are_clear_errors():
    A, D = torch.randn(2, 5, 7), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"Lambda must be \[d_out, d_in\]"):
        grad_stats_linear(A, D, torch.randn(7, 3))
    with pytest.raises(ValueError, match="method"):
        grad_stats_linear(A, D, torch.randn(3, 7), method="fast")
    with pytest.raises(ValueError, match="backend"):
        grad_stats_linear(A, D, torch.randn(3, 7), backend="cuda")


# ----------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dtype,rtol,atol,backend", list(_cases()))
@pytest.mark.parametrize("vocab_start,V_local", [(0, 11), (4, 5)])
def test_embedding_matches_vmap_grad_with_repeated_ids(vocab_start, V_local, dtype, rtol, atol, backend):
    """Ids from a small range repeat many times per example; a shard [vocab_start, +V_local) sees only
    its rows (ids outside contribute 0)."""
    B, T, d, V = 3, 13, 37, 11
    ids = torch.randint(0, 7, (B, T))
    ids[0, :4] = 3  # a run of one id
    E = torch.randn(V, d, dtype=torch.float64)
    C = torch.randn(B, T, d, dtype=torch.float64)
    mask = _mask(B, T)
    lam = torch.randn(V, d, dtype=torch.float64)

    def loss(e, i, c, m):
        return (m[:, None] * c * torch.tanh(e[i])).sum()

    G = vmap(grad(loss), in_dims=(None, 0, 0, 0))(E, ids, C, mask)[:, vocab_start : vocab_start + V_local]
    lam_shard = lam[vocab_start : vocab_start + V_local]
    D = (mask[..., None] * C * (1 - torch.tanh(E[ids]) ** 2)).to(dtype)
    truth = ((G * lam_shard).sum((1, 2)), G.square().sum((1, 2)))
    if dtype == torch.bfloat16:
        oh = torch.nn.functional.one_hot(ids - vocab_start + V, 3 * V)[..., V : V + V_local].double()
        G = torch.einsum("btv,btd->bvd", oh * mask[..., None], D.double())
        truth = ((G * lam_shard).sum((1, 2)), G.square().sum((1, 2)))
    lam_shard = lam_shard.to(torch.float64 if dtype == torch.float64 else torch.float32)
    out = grad_stats_embedding(ids, D, lam_shard, vocab_start=vocab_start, mask=mask, backend=backend)
    _check(out, truth, rtol, atol, f"embedding/{backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [130, 300])
def test_embedding_and_norm_several_feature_blocks(backend, d):
    """d over the 128-wide feature block of the embedding and norm kernels; truth by one-hot products."""
    B, T, V = 2, 21, 9
    ids = torch.randint(0, V, (B, T))
    D = torch.randn(B, T, d)
    mask = _mask(B, T)
    lam = torch.randn(V, d)
    G = torch.einsum("btv,btd->bvd", torch.nn.functional.one_hot(ids, V).double() * mask[..., None], D.double())
    truth = ((G * lam.double()).sum((1, 2)), G.square().sum((1, 2)))
    _check(grad_stats_embedding(ids, D, lam, mask=mask, backend=backend), truth, *F32_TOL, "embedding")
    xhat = torch.randn(B, T, d)
    g = (xhat.double() * D.double() * mask[..., None]).sum(1)
    truth = (g @ lam[0].double(), g.square().sum(1))
    _check(grad_stats_norm(xhat, D, lam[0], mask, backend=backend), truth, *F32_TOL, "norm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_repeats_are_summed_before_squaring(backend):
    """Two equal ids: |D1 + D2|^2, not |D1|^2 + |D2|^2."""
    D = torch.randn(1, 2, 17)
    ids = torch.tensor([[5, 5]])
    dot, sq = grad_stats_embedding(ids, D, torch.randn(8, 17), backend=backend)
    assert_close(sq, (D[0, 0] + D[0, 1]).square().sum().reshape(1), rtol=1e-5, name="sq")


# ----------------------------------------------------------------------------- norm weights


@pytest.mark.parametrize("dtype,rtol,atol,backend", list(_cases()))
def test_norm_weight_matches_vmap_grad(dtype, rtol, atol, backend):
    B, T, d = 3, 13, 37
    x = torch.randn(B, T, d, dtype=torch.float64)
    xhat = (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)).to(dtype).double()
    w = 1 + 0.1 * torch.randn(d, dtype=torch.float64)
    C = torch.randn(B, T, d, dtype=torch.float64)
    mask = _mask(B, T)
    lam = torch.randn(d, dtype=torch.float64)

    def loss(w_, xh, c, m):
        return (m[:, None] * c * torch.tanh(w_ * xh)).sum()

    G = vmap(grad(loss), in_dims=(None, 0, 0, 0))(w, xhat, C, mask)  # [B, d]
    D = (C * (1 - torch.tanh(w * xhat) ** 2)).to(dtype)  # junk at padding: the mask hides it
    truth = (G @ lam, G.square().sum(1))
    if dtype == torch.bfloat16:
        g = (xhat * D.double() * mask[..., None]).sum(1)
        truth = (g @ lam, g.square().sum(1))
    lam = lam.to(torch.float64 if dtype == torch.float64 else torch.float32)
    out = grad_stats_norm(xhat.to(dtype), D, lam, mask=mask, backend=backend)
    _check(out, truth, rtol, atol, f"norm/{backend}")
