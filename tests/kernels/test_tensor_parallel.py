"""Vocab-parallel loss and LM head statistics over 2 gloo processes equal the unsharded ones.

The head weight (with vocabulary padding rows) is split by vocabulary rows; the hidden states enter
through ``copy_to_region`` (backward all-reduce, Megatron's convention). Checked per rank, against the
float64 truth: ``per_example_loss``'s loss and logsumexp, gradients wrt the hidden states and the
weight shard, and (torch reference) a Hessian-vector product by double backward; the fused
``lm_head_loss_and_stats``'s losses, logsumexp, gradient wrt the hidden states and all-reduced head
statistics, also against the unsharded op. One configuration leaves a rank with padding rows only.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats
from lqs_megatron.kernels.per_example_loss import per_example_loss
from lqs_megatron.parallel.mappings import copy_to_region, reduce_from_region
from tests.kernels.test_lm_head_stats import truth_stats
from tests.kernels.test_per_example_loss import _problem, truth_loss
from tests.kernels.tolerances import rtol
from tests.utils import assert_close, spawn

LOSS, GRAD = rtol("loss", torch.float32), rtol("grad", torch.float32)
CONFIGS = [(3, 11, 24, 70, 61), (2, 7, 16, 70, 30)]  # (B, T, d, V padded, vocab_size)


def _truth(B, T, d, V, vocab_size):
    hidden, weight, labels, mask = _problem(B, T, d, V, vocab_size, torch.float32)
    lam = torch.randn(V, d)
    coef = torch.randn(B, dtype=torch.float64)
    vw = torch.randn(V, d, dtype=torch.float64)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    loss = truth_loss(h64, w64, labels, mask, vocab_size)
    gh, gw = torch.autograd.grad((loss * coef).sum(), [h64, w64], create_graph=True)
    (hvp_w,) = torch.autograd.grad((gw * vw).sum(), [w64])
    lse = torch.logsumexp(hidden.double() @ weight.double()[:vocab_size].T, -1) * mask
    stats = truth_stats(hidden, weight, labels, mask, lam, vocab_size)
    inputs = (hidden, weight, labels, mask, lam, coef, vw)
    return inputs, (loss.detach(), lse, gh.detach(), gw.detach(), hvp_w, *stats)


def _rank_fn(rank, world, backend, problems, hvp=False):
    group = dist.group.WORLD
    for (_, _, _, V, vocab_size), inputs, truth in problems:
        hidden, weight, labels, mask, lam, coef, vw = inputs
        t_loss, t_lse, t_gh, t_gw, t_hvp, t_dot, t_sq = truth
        vl = V // world
        sl = slice(rank * vl, (rank + 1) * vl)
        h = hidden.clone().requires_grad_()
        w = weight[sl].clone().requires_grad_()
        kw = dict(
            vocab_size=vocab_size,
            vocab_start=rank * vl,
            tp_group=group,
            return_lse=True,
            backend=backend,
            tp_reduce=reduce_from_region,
        )
        loss, lse = per_example_loss(copy_to_region(h, group), w, labels, mask, **kw)
        tag = f"rank {rank} {backend} V={V} vocab={vocab_size}"
        assert_close(loss, t_loss, rtol=LOSS, name=f"{tag} loss")
        assert_close(lse, t_lse, rtol=LOSS, atol=1e-6, name=f"{tag} lse")
        gh, gw = torch.autograd.grad((loss * coef.float()).sum(), [h, w], create_graph=hvp)
        assert_close(gh, t_gh, rtol=GRAD, atol=GRAD * float(t_gh.abs().max()), name=f"{tag} grad hidden")
        assert_close(gw, t_gw[sl], rtol=GRAD, atol=GRAD * float(t_gw.abs().max()), name=f"{tag} grad weight")
        if hvp:  # the inner product <g, v> summed over the shards, then differentiated again
            (hw,) = torch.autograd.grad(reduce_from_region((gw * vw[sl].float()).sum(), group), [w])
            assert_close(hw, t_hvp[sl], rtol=GRAD, atol=GRAD * float(t_hvp.abs().max()), name=f"{tag} HVP")
            continue
        # The fused head pass: sharded, then unsharded in this process.
        h = hidden.clone().requires_grad_()
        losses, dot, sq, lse = lm_head_loss_and_stats(
            copy_to_region(h, group), weight[sl], labels, mask, lam[sl], vocab_size, rank * vl, group, backend=backend
        )
        (gh,) = torch.autograd.grad((losses * coef.float()).sum(), [h])
        both = torch.stack([dot, sq])
        dist.all_reduce(both, group=group)
        h1 = hidden.clone().requires_grad_()
        u_losses, u_dot, u_sq, u_lse = lm_head_loss_and_stats(
            h1, weight, labels, mask, lam, vocab_size, backend=backend
        )
        (u_gh,) = torch.autograd.grad((u_losses * coef.float()).sum(), [h1])
        tag = f"{tag} fused"
        for got, unsharded, truth, name in [
            (losses.detach(), u_losses.detach(), t_loss, "losses"),
            (lse, u_lse, t_lse, "lse"),
            (gh, u_gh, t_gh, "grad hidden"),
            (both[0], u_dot, t_dot, "head dot"),
            (both[1], u_sq, t_sq, "head sqnorm"),
        ]:
            scale = float(truth.abs().max())
            assert_close(got, truth, rtol=1e-4, atol=1e-5 * scale, name=f"{tag} {name} vs float64")
            assert_close(got, unsharded, rtol=1e-5, atol=1e-6 * scale, name=f"{tag} {name} vs unsharded")


def _problems():
    return [(cfg, *_truth(*cfg)) for cfg in CONFIGS]


@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_vocab_parallel_loss_and_head_stats_equal_unsharded(backend):
    spawn(_rank_fn, 2, backend, _problems())


@pytest.mark.distributed
def test_vocab_parallel_reference_hvp_by_double_backward():
    spawn(_rank_fn, 2, "torch", _problems(), True)
