"""Vocab-parallel loss and LM head statistics over 2 gloo processes equal the unsharded ones.

The head weight (with vocabulary padding rows) is split by vocabulary rows; the hidden states enter
through ``copy_to_region`` (backward all-reduce, Megatron's convention). Checked per rank: loss and
logsumexp, gradient wrt the hidden states and wrt the weight shard, the all-reduced head statistics,
and (torch reference) a Hessian-vector product by double backward. One configuration leaves a rank
with padding rows only.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lqs_megatron.kernels.lm_head_stats import lm_head_grad_stats
from lqs_megatron.kernels.per_example_loss import per_example_loss
from lqs_megatron.models.mappings import copy_to_region, reduce_from_region
from tests.kernels.test_lm_head_stats import per_example_head_grads
from tests.kernels.test_per_example_loss import _problem, truth_loss
from tests.utils import assert_close, spawn

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
    G = per_example_head_grads(hidden, weight, labels, mask, vocab_size)
    stats = ((G * lam.double()).sum((1, 2)), G.square().sum((1, 2)))
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
        kw = dict(vocab_size=vocab_size, vocab_start=rank * vl, tp_group=group, return_lse=True, backend=backend)
        loss, lse = per_example_loss(copy_to_region(h, group), w, labels, mask, **kw)
        tag = f"rank {rank} {backend} V={V} vocab={vocab_size}"
        assert_close(loss, t_loss, rtol=1e-5, name=f"{tag} loss")
        assert_close(lse, t_lse, rtol=1e-5, atol=1e-6, name=f"{tag} lse")
        gh, gw = torch.autograd.grad((loss * coef.float()).sum(), [h, w], create_graph=hvp)
        assert_close(gh, t_gh, rtol=1e-4, atol=1e-4 * float(t_gh.abs().max()), name=f"{tag} grad hidden")
        assert_close(gw, t_gw[sl], rtol=1e-4, atol=1e-4 * float(t_gw.abs().max()), name=f"{tag} grad weight")
        if hvp:  # the inner product <g, v> summed over the shards, then differentiated again
            (hw,) = torch.autograd.grad(reduce_from_region((gw * vw[sl].float()).sum(), group), [w])
            assert_close(hw, t_hvp[sl], rtol=1e-4, atol=1e-4 * float(t_hvp.abs().max()), name=f"{tag} HVP")
            continue
        dot, sq = lm_head_grad_stats(h.detach(), w.detach(), labels, mask, lam[sl], lse, vocab_size=vocab_size,
                                     vocab_start=rank * vl, backend=backend)  # fmt: skip
        both = torch.stack([dot, sq])
        dist.all_reduce(both, group=group)
        assert_close(both[0], t_dot, rtol=1e-4, atol=1e-4 * float(t_dot.abs().max()), name=f"{tag} head dot")
        assert_close(both[1], t_sq, rtol=1e-4, name=f"{tag} head sqnorm")


def _problems():
    return [(cfg, *_truth(*cfg)) for cfg in CONFIGS]


@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_vocab_parallel_loss_and_head_stats_equal_unsharded(backend):
    spawn(_rank_fn, 2, backend, _problems())


@pytest.mark.distributed
def test_vocab_parallel_reference_hvp_by_double_backward():
    spawn(_rank_fn, 2, "torch", _problems(), True)
