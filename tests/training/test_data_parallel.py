"""dp=2 (2 gloo processes, DDP) makes the update of one process on the same global batch;
the schedule and the tp-aware clipping against their plain definitions."""

import math

import pytest
import torch

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.optim import WarmupCosine, build_optimizer, clip_grad_norm
from tests.utils import assert_close, spawn

CFG = dict(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)


def _train(dims, tokens_fn, micro, steps=3):
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.training.loss import CausalLMLoss
    from lqs_megatron.training.pretrainer import lm_micro_batches
    from lqs_megatron.training.step import TrainStep

    model = build_model(ModelConfig(**CFG), dims, seed=7, dtype=torch.float64)  # float64: Adam amplifies noise
    opt = build_optimizer(model, lr=1e-2)
    step_fn = TrainStep(CausalLMLoss(model), dims, opt, WarmupCosine(1e-2, 1e-3, 1, steps), clip_grad=0.5)
    losses = []
    for s in range(steps):
        tokens = tokens_fn(s)
        res = step_fn(lm_micro_batches(tokens, micro), len(tokens), s)
        assert res.finite
        losses.append(res.loss)
    return model, losses


def _dp_worker(rank: int, world: int) -> None:
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=1, device="cpu")
    assert dims.dp == 2 and dims.dp_group is not None and dims.tp_group is None
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 53, (6, 12), generator=gen) for _ in range(3)]  # global batch 6, L = 11
    ref_model, ref_losses = _train(ParallelDims(), lambda s: batches[s], micro=2)  # one process, 3 micro-batches
    dp_model, dp_losses = _train(dims, lambda s: batches[s][3 * rank : 3 * rank + 3], micro=3)
    assert_close(torch.tensor(dp_losses), torch.tensor(ref_losses), rtol=1e-12, name="loss")
    for (name, p), q in zip(dp_model.named_parameters(), ref_model.parameters()):
        assert_close(p, q, rtol=1e-9, atol=1e-12, name=f"{name} after 3 updates (rank {rank})")


@pytest.mark.distributed
def test_dp2_equals_one_process():
    spawn(_dp_worker, 2)


def test_warmup_cosine():
    s = WarmupCosine(lr=1.0, min_lr=0.1, warmup=4, total=14)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(s(9), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(s(14), 0.1) and math.isclose(s(100), 0.1)


def test_clip_matches_torch_on_one_rank():
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    a[0].tp_dim = 0  # a sharded weight on a tp=1 run counts once
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    norm = clip_grad_norm(a, 0.3, ParallelDims())
    ref = torch.nn.utils.clip_grad_norm_(b, 0.3)
    assert_close(norm, ref, rtol=1e-6, name="norm")
    for p, q in zip(a, b):
        assert_close(p.grad, q.grad, rtol=1e-6, name="clipped grad")


def test_one_autocast_for_training_annotation_evaluation_and_scoring():
    """16-bit dtypes autocast; None, float32 and float64 (annotate's full-precision compute) run as they are."""
    import lqs_megatron.lqs.costate
    import lqs_megatron.lqs.derivatives
    import lqs_megatron.lqs.sweep
    import lqs_megatron.scorer.predict
    import lqs_megatron.training.evaluate
    from lqs_megatron.training.step import autocast

    users = (
        lqs_megatron.lqs.costate,
        lqs_megatron.lqs.derivatives,
        lqs_megatron.lqs.sweep,
        lqs_megatron.training.evaluate,
    )
    assert all(m.autocast is autocast for m in users) and lqs_megatron.scorer.predict.amp_context is autocast
    cpu = torch.device("cpu")
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with autocast(cpu, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    for dtype in (None, torch.float32, torch.float64):
        with autocast(cpu, dtype):
            assert (a @ b).dtype == torch.float32 and torch.equal(a @ b, torch.mm(a, b)), dtype
