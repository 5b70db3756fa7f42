"""Tensor parallelism against the dense model on the CPU: 2 gloo processes, each rank's shards
compared with the dense layer's / model's slices (forward, loss and every gradient), and
the hook-visible semantics the LQS engine relies on."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from tests.utils import assert_close, spawn


def _hooked(module):
    seen = {}

    def hook(mod, inp, out):
        seen["input"], seen["output"] = inp[0], out

    module.register_forward_hook(hook)
    return seen


def _check_layers(rank: int, world: int, group) -> None:
    torch.manual_seed(0)  # same dense layers and inputs on both ranks
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    dense = nn.Linear(12, 8, bias=False).double()
    y_ref = dense(x)
    gy = torch.randn_like(y_ref)
    (y_ref * gy).sum().backward()
    gx_ref, gw_ref = x.grad.clone(), dense.weight.grad.clone()
    rows = slice(rank * 4, rank * 4 + 4)

    x.grad = None
    col = ColumnParallelLinear.from_dense(dense, group)
    seen = _hooked(col)
    y = col(x)
    assert seen["input"] is x and seen["output"].shape == (3, 5, 4) and col.tp_group is group
    assert_close(y, y_ref[..., rows], rtol=1e-12, atol=1e-12, name="column output shard")
    (y * gy[..., rows]).sum().backward()
    assert_close(col.weight.grad, gw_ref[rows], rtol=1e-12, atol=1e-12, name="column weight grad")
    assert_close(x.grad, gx_ref, rtol=1e-12, atol=1e-12, name="column input grad (all-reduced)")
    assert_close(ColumnParallelLinear.from_dense(dense, group, gather_output=True)(x), y_ref, 1e-12, name="gather")

    # row-parallel: input is the shard along the last dim, output is the full sum
    dense2 = nn.Linear(8, 6, bias=False).double()
    h = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    z_ref = dense2(h)
    gz = torch.randn_like(z_ref)
    (z_ref * gz).sum().backward()
    row = RowParallelLinear.from_dense(dense2, group)
    h_local = h.detach()[..., rows].clone().requires_grad_()
    seen = _hooked(row)
    z = row(h_local)
    assert seen["input"] is h_local and seen["output"].shape == (3, 5, 6)
    assert_close(z, z_ref, rtol=1e-12, atol=1e-12, name="row output (all-reduced)")
    (z * gz).sum().backward()
    assert_close(row.weight.grad, dense2.weight.grad[:, rows], rtol=1e-12, atol=1e-12, name="row weight grad")
    assert_close(h_local.grad, h.grad[..., rows], rtol=1e-12, atol=1e-12, name="row input grad")

    # vocab-parallel embedding: rows [vocab_start, vocab_end) local, output full
    emb = nn.Embedding(10, 7).double()
    ids = torch.randint(0, 10, (4, 6))
    e_ref = emb(ids)
    ge = torch.randn_like(e_ref)
    (e_ref * ge).sum().backward()
    vemb = VocabParallelEmbedding.from_dense(emb, group)
    assert (vemb.vocab_start, vemb.vocab_end) == (5 * rank, 5 * rank + 5)
    seen = _hooked(vemb)
    e = vemb(ids)
    assert seen["input"] is ids and seen["output"].shape == (4, 6, 7)
    assert_close(e, e_ref, rtol=1e-12, atol=1e-12, name="embedding output")
    (e * ge).sum().backward()
    assert_close(vemb.weight.grad, emb.weight.grad[5 * rank : 5 * rank + 5], 1e-12, 1e-12, name="embedding grad")


def _check_model(rank: int, world: int, dims, tie: bool) -> None:
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.models.parallelize import tp_dim_of
    from lqs_megatron.training.loss import per_example_lm_loss

    cfg = ModelConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        tie_word_embeddings=tie,
    )
    dense = build_model(cfg, None, seed=11, dtype=torch.float64)
    par = build_model(cfg, dims, seed=11, dtype=torch.float64)
    assert dense.padded_vocab_size == 61 and par.padded_vocab_size == 62  # vocab padded for tp=2
    assert isinstance(par.output, ParallelLMHead) and par.output.vocab_start == 31 * rank
    torch.manual_seed(5)
    ids = torch.randint(0, 61, (3, 10))
    labels = torch.randint(0, 61, (3, 10))
    mask = torch.ones(3, 10)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    # logits: independent reference is the dense model's full softmax over the true vocabulary
    logits_ref = dense.logits(dense(ids))
    assert_close(par.logits(par(ids)), logits_ref, rtol=1e-10, atol=1e-10, name="logits")
    loss_ref = (F.cross_entropy(logits_ref.transpose(1, 2), labels, reduction="none") * mask).sum(1) / mask.sum(1)
    loss_dense = per_example_lm_loss(dense, ids, labels, mask)
    loss_par = per_example_lm_loss(par, ids, labels, mask)
    assert_close(loss_dense, loss_ref, rtol=1e-10, name="dense per-example loss")
    assert_close(loss_par, loss_ref, rtol=1e-10, name="tp per-example loss")
    loss_dense.mean().backward()
    loss_par.mean().backward()
    dense_params = dict(dense.named_parameters())
    for name, p in par.named_parameters():
        g_ref = dense_params[name].grad
        d = tp_dim_of(name)
        if d is not None:
            if name in ("tok_embeddings.weight", "output.weight"):  # pad the reference by one zero row
                g_ref = torch.cat([g_ref, g_ref.new_zeros(1, g_ref.shape[1])])
            g_ref = g_ref.chunk(2, dim=d)[rank]
        assert p.grad.shape == g_ref.shape, name
        assert_close(p.grad, g_ref, rtol=1e-9, atol=1e-12, name=f"grad {name} (rank {rank})")
    if rank == 1:  # the padded row: never looked up, out of the softmax
        assert par.output.weight.grad[-1].abs().max() == 0 and par.tok_embeddings.weight[-1].abs().max() == 0


def _tp_worker(rank: int, world: int) -> None:
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=2, device="cpu")
    assert dims.tp == 2 and dims.dp == 1 and dims.tp_rank == rank and dims.tp_group is not None
    _check_layers(rank, world, dims.tp_group)
    _check_model(rank, world, dims, tie=False)
    _check_model(rank, world, dims, tie=True)


@pytest.mark.distributed
def test_tp2_matches_dense():
    spawn(_tp_worker, 2)


def test_layers_without_group_are_dense():
    lin = nn.Linear(6, 4, bias=True)
    x = torch.randn(2, 6)
    for cls in (ColumnParallelLinear, RowParallelLinear):
        m = cls.from_dense(lin, None)
        assert isinstance(m, nn.Linear) and m.tp_group is None
        assert_close(m(x), lin(x), rtol=1e-6, atol=1e-6, name=cls.__name__)
    emb = nn.Embedding(9, 3)
    ids = torch.randint(0, 9, (2, 5))
    assert torch.equal(VocabParallelEmbedding.from_dense(emb, None)(ids), emb(ids))
