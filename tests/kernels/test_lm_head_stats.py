"""The fused LM head pass (losses, lse, dhidden, head statistics) against independent float64 truths.

Both backends (Triton under ``TRITON_INTERPRET=1``), odd shapes, random padding and a hole, vocabulary
padding rows, one and several examples per chunk, the direct and ghost statistics of the torch
reference. Truths: materialised float64 logits + ``F.cross_entropy`` (losses, lse), float64 autograd
(gradient wrt the hidden states), float64 ``vmap(grad)`` per-example head gradients (statistics).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from lqs_megatron.errors import LQSError
from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats
from tests.kernels.test_per_example_loss import _problem, truth_loss
from tests.kernels.tolerances import rtol
from tests.utils import assert_close

# (rtol of losses/lse, rtol of dhidden and the statistics) against the float64 truth on the same rounded inputs
TOLS = {dt: (rtol("loss", dt), rtol("grad", dt)) for dt in (torch.float32, torch.bfloat16, torch.float64)}
CASES = [
    pytest.param(dtype, backend, id=f"{backend}-{str(dtype)[6:]}")
    for dtype in TOLS
    for backend in ("torch", "triton")
    if not (backend == "triton" and dtype == torch.float64)
]
# (B, T, d, V padded, vocab_size): examples per chunk = max(1, B d // V); the torch reference's statistics
# are ghost when t^2 < d vocab_size for the chunk's longest example t (example 0 has t = T), else direct.
SHAPES = [
    (3, 13, 40, 70, 61),  # one example per chunk, ghost, padding rows
    (2, 29, 9, 23, 19),  # one example per chunk, direct, padding rows
    (7, 6, 24, 29, 29),  # chunks of 5 and 2 examples, ghost
    (5, 19, 8, 13, 11),  # chunks of 3 and 2 examples, direct, padding rows
]


def per_example_head_grads(hidden, weight, labels, mask, vocab_size):
    """``G_n = d l_n / d W`` for every example, float64, through materialised logits."""

    def loss(w, h, y, m):
        logits = h @ w[:vocab_size].T
        ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        return (ce * m).sum() / m.sum()

    return vmap(grad(loss), in_dims=(None, 0, 0, 0))(weight.double(), hidden.double(), labels, mask.double())


def truth_lse(hidden, weight, labels, mask, vocab_size):
    """Global logsumexp per row from float64 ``F.cross_entropy`` (``CE + target logit``), 0 where the mask is 0."""
    logits = hidden.double() @ weight.double()[:vocab_size].T
    y = labels.clamp_min(0)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (ce + logits.gather(2, y.unsqueeze(2)).squeeze(2)) * (mask != 0)


def truth_stats(hidden, weight, labels, mask, lam, vocab_size):
    G = per_example_head_grads(hidden, weight, labels, mask, vocab_size)
    return (G * lam.double()).sum((1, 2)), G.square().sum((1, 2))


@pytest.mark.parametrize("dtype,backend", CASES)
@pytest.mark.parametrize("B,T,d,V,vocab_size", SHAPES)
def test_fused_head_matches_float64_truths(B, T, d, V, vocab_size, dtype, backend):
    loss_rtol, rtol = TOLS[dtype]
    hidden, weight, labels, mask = _problem(B, T, d, V, vocab_size, dtype)
    lam = torch.randn(V, d, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    coef = torch.randn(B, dtype=torch.float64)
    h64 = hidden.detach().double().requires_grad_()  # a new leaf even for float64 inputs
    t_loss = truth_loss(h64, weight, labels, mask, vocab_size)
    t_gh_sum, t_gh_coef = (torch.autograd.grad((t_loss * c).sum(), h64, retain_graph=True)[0] for c in (1.0, coef))
    t_dot, t_sq = truth_stats(hidden, weight, labels, mask, lam, vocab_size)

    h = hidden.clone().requires_grad_()
    losses, dot, sq, lse = lm_head_loss_and_stats(h, weight, labels, mask, lam, vocab_size, backend=backend)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert losses.dtype == lse.dtype == dot.dtype == sq.dtype == acc
    assert not (dot.requires_grad or sq.requires_grad or lse.requires_grad)
    assert_close(losses, t_loss.detach(), rtol=loss_rtol, name="losses")
    assert_close(lse, truth_lse(hidden, weight, labels, mask, vocab_size), rtol=loss_rtol, name="lse")
    assert_close(dot, t_dot, rtol=rtol, atol=rtol * float(t_dot.abs().max()), name="dot")
    assert_close(sq, t_sq, rtol=rtol, name="sqnorm")
    (gh,) = torch.autograd.grad(losses.sum(), h, retain_graph=True)
    assert gh.dtype == dtype
    assert_close(gh, t_gh_sum, rtol=rtol, atol=rtol * float(t_gh_sum.abs().max()), name="dhidden of losses.sum()")
    (gh,) = torch.autograd.grad((losses * coef.to(acc)).sum(), h)
    assert_close(gh, t_gh_coef, rtol=rtol, atol=rtol * float(t_gh_coef.abs().max()), name="dhidden, weighted")

    # Without autograd: the same forward, no dhidden GEMM, no graph.
    with torch.no_grad():
        again = lm_head_loss_and_stats(hidden, weight, labels, mask, lam, vocab_size, backend=backend)
    for a, b, name in zip(again, (losses.detach(), dot, sq, lse), ("losses", "dot", "sqnorm", "lse")):
        assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()), name=f"no-grad {name}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fully_masked_example_gives_zeros(backend):
    hidden, weight, labels, mask = _problem(3, 7, 16, 21, 19, torch.float32)
    mask[1] = 0
    labels[1] = -100
    lam = torch.randn(21, 16)
    h = hidden.clone().requires_grad_()
    losses, dot, sq, lse = lm_head_loss_and_stats(h, weight, labels, mask, lam, 19, backend=backend)
    (gh,) = torch.autograd.grad(losses.sum(), h)
    assert losses[1] == 0 and dot[1] == 0 and sq[1] == 0
    assert (lse[1] == 0).all() and (gh[1] == 0).all()
    assert (sq[[0, 2]] > 0).all() and torch.isfinite(losses).all()


def test_bad_inputs_are_named():
    hidden, weight, labels, mask = _problem(2, 5, 8, 11, 11, torch.float32)
    with pytest.raises(ValueError, match="lam must have weight's shape"):
        lm_head_loss_and_stats(hidden, weight, labels, mask, torch.randn(11, 7), 11)
    labels[1, 2] = 11
    mask[1, 2] = 1
    with pytest.raises(LQSError, match="label id 11 at example 1, position 2"):
        lm_head_loss_and_stats(hidden, weight, labels, mask, torch.randn(11, 8), 11)
