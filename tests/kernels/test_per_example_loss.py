"""Fused per-example loss against materialised float64 logits + F.cross_entropy, forward and gradients.

Both backends (Triton under ``TRITON_INTERPRET=1``), odd shapes, random padding, vocabulary padding
rows, uniform and per-example upstream gradients (the two backward branches), and the torch
reference's second derivatives (Hessian-vector products) against ``torch.func``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lqs_megatron.errors import LQSError
from lqs_megatron.kernels.per_example_loss import per_example_loss, per_example_loss_reference
from tests.kernels.tolerances import rtol
from tests.utils import assert_close, rel_err

# (rtol of loss/lse, rtol of the gradients) against the float64 truth on the same rounded inputs
DTYPES = {dt: (rtol("loss", dt), rtol("grad", dt)) for dt in (torch.float32, torch.bfloat16, torch.float64)}


def _cases():
    for dtype in DTYPES:
        for backend in ("torch", "triton"):
            if backend == "triton" and dtype == torch.float64:
                continue
            yield pytest.param(dtype, backend, id=f"{backend}-{str(dtype)[6:]}")


def _problem(B, T, d, V, vocab_size, dtype):
    hidden = torch.randn(B, T, d, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, d, dtype=torch.float64) / d**0.5 * 3).to(dtype)
    labels = torch.randint(0, vocab_size, (B, T))
    lengths = torch.randint(2, T + 1, (B,))
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float32)
    mask[-1, 1] = 0  # a hole
    labels[mask == 0] = -100  # ignored labels at padding must not matter
    return hidden, weight, labels, mask


def truth_loss(hidden, weight, labels, mask, vocab_size):
    """Materialised float64 logits of the true vocabulary, F.cross_entropy, masked mean per example."""
    B, T, _ = hidden.shape
    logits = hidden.double() @ weight.double()[:vocab_size].T
    ce = F.cross_entropy(logits.reshape(B * T, -1), labels.clamp_min(0).reshape(-1), reduction="none").view(B, T)
    m = mask.double()
    return (ce * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("dtype,backend", list(_cases()))
@pytest.mark.parametrize("B,T,d,V,vocab_size", [(3, 13, 40, 70, 70), (2, 9, 17, 53, 47)])
@pytest.mark.parametrize("upstream", ["sum", "weighted"])
def test_loss_and_gradients_match_materialised_cross_entropy(B, T, d, V, vocab_size, upstream, dtype, backend):
    loss_rtol, grad_rtol = DTYPES[dtype]
    hidden, weight, labels, mask = _problem(B, T, d, V, vocab_size, dtype)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    truth = truth_loss(h64, w64, labels, mask, vocab_size)
    coef = torch.ones(B, dtype=torch.float64) if upstream == "sum" else torch.randn(B, dtype=torch.float64)
    tgh, tgw = torch.autograd.grad((truth * coef).sum(), [h64, w64])

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, lse = per_example_loss(h, w, labels, mask, vocab_size=vocab_size, return_lse=True, backend=backend)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(loss, truth, rtol=loss_rtol, name="loss")
    tlse = torch.logsumexp(h64.detach() @ w64.detach()[:vocab_size].T, -1) * mask
    assert_close(lse, tlse, rtol=loss_rtol, atol=1e-6, name="lse")
    gh, gw = torch.autograd.grad((loss * coef.to(loss.dtype)).sum(), [h, w])
    assert gh.dtype == dtype and gw.dtype == dtype
    assert rel_err(gh, tgh) < grad_rtol, f"grad hidden rel err {rel_err(gh, tgh):.3g}"
    assert rel_err(gw, tgw) < grad_rtol, f"grad weight rel err {rel_err(gw, tgw):.3g}"
    if dtype != torch.bfloat16:
        assert_close(gh, tgh, rtol=grad_rtol, atol=grad_rtol * float(tgh.abs().max()), name="grad hidden")
        assert_close(gw, tgw, rtol=grad_rtol, atol=grad_rtol * float(tgw.abs().max()), name="grad weight")
    assert not gw[vocab_size:].any(), "vocabulary padding rows must get no gradient"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_large_vocabulary_spans_several_kernel_blocks(backend):
    """V over the kernels' 4096-column block: the online logsumexp rescales across blocks."""
    hidden, weight, labels, mask = _problem(2, 3, 16, 9000, 8999, torch.float32)
    weight = weight * 4  # spread the logits so that the running maximum changes between blocks
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = per_example_loss(h, w, labels, mask, vocab_size=8999, backend=backend)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    truth = truth_loss(h64, w64, labels, mask, 8999)
    assert_close(loss, truth, rtol=1e-5, name="loss")
    gh, gw = torch.autograd.grad(loss.sum(), [h, w])
    tgh, tgw = torch.autograd.grad(truth.sum(), [h64, w64])
    assert rel_err(gh, tgh) < 1e-5 and rel_err(gw, tgw) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_only_one_input_requires_grad_and_no_grad_mode(backend):
    hidden, weight, labels, mask = _problem(2, 7, 19, 31, 31, torch.float32)
    truth = truth_loss(hidden, weight, labels, mask, 31)
    with torch.no_grad():
        assert_close(per_example_loss(hidden, weight, labels, mask, backend=backend), truth, rtol=1e-5, name="no_grad")
    h = hidden.clone().requires_grad_()
    loss = per_example_loss(h, weight, labels, mask, backend=backend)
    (gh,) = torch.autograd.grad(loss.mean(), [h])
    h64 = hidden.double().requires_grad_()
    (tgh,) = torch.autograd.grad(truth_loss(h64, weight, labels, mask, 31).mean(), [h64])
    assert rel_err(gh, tgh) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_example_without_real_positions_has_zero_loss(backend):
    hidden, weight, labels, mask = _problem(3, 6, 16, 20, 20, torch.float32)
    mask[1] = 0
    loss = per_example_loss(hidden, weight, labels, mask, backend=backend)
    assert float(loss[1]) == 0.0 and torch.isfinite(loss).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_label_outside_vocabulary_is_a_clear_error(backend):
    hidden, weight, labels, mask = _problem(2, 5, 16, 20, 18, torch.float32)
    labels[1, 0] = 18  # a padding row of the head, not a real token
    with pytest.raises(LQSError, match=r"label id 18 at example 1, position 0 is outside the vocabulary \[0, 18\)"):
        per_example_loss(hidden, weight, labels, mask, vocab_size=18, backend=backend)


def test_reference_hessian_vector_products_match_torch_func():
    """Double backward and forward-over-reverse through the reference equal the float64 truth's HVP."""
    hidden, weight, labels, mask = _problem(2, 7, 12, 23, 19, torch.float64)
    vh, vw = torch.randn_like(hidden), torch.randn_like(weight)

    def f_truth(h, w):
        return truth_loss(h, w, labels, mask, 19).mean()

    def f_ref(h, w):
        return per_example_loss_reference(h, w, labels, mask, vocab_size=19, chunk_bytes=7 * 19 * 8).mean()

    _, (th, tw) = torch.func.jvp(torch.func.grad(f_truth, argnums=(0, 1)), (hidden, weight), (vh, vw))
    _, (fh, fw) = torch.func.jvp(torch.func.grad(f_ref, argnums=(0, 1)), (hidden, weight), (vh, vw))
    assert_close(fh, th, rtol=1e-9, atol=1e-12, name="fwd-over-rev hidden")
    assert_close(fw, tw, rtol=1e-9, atol=1e-12, name="fwd-over-rev weight")
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    gh, gw = torch.autograd.grad(f_ref(h, w), [h, w], create_graph=True)
    hh, hw = torch.autograd.grad((gh * vh).sum() + (gw * vw).sum(), [h, w])
    assert_close(hh, th, rtol=1e-9, atol=1e-12, name="double-backward hidden")
    assert_close(hw, tw, rtol=1e-9, atol=1e-12, name="double-backward weight")
