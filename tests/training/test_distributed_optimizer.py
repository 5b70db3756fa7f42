"""--distributed-optimizer (torch's ZeroRedundancyOptimizer over the dp group): the same updates as
plain AdamW under DDP at dp2 and tp2 x dp2, about 1/dp of the optimizer state per rank, and the same
checkpointed state (one logical optimizer state) as the plain optimizer."""

import pytest
import torch

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.training.optim import (
    WarmupCosine,
    build_optimizer,
    is_sharded,
    optimizer_state_bytes,
    optimizer_state_for_save,
)
from tests.utils import assert_close, spawn

CFG = dict(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
STEPS = 4


def _train(dims, batches, distributed: bool):
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.training.loss import CausalLMLoss
    from lqs_megatron.training.pretrainer import lm_micro_batches
    from lqs_megatron.training.step import TrainStep

    model = build_model(ModelConfig(**CFG), dims, seed=7, dtype=torch.float64)  # float64: Adam amplifies noise
    opt = build_optimizer(model, lr=1e-2, dims=dims, distributed=distributed)
    assert is_sharded(opt) == distributed
    step_fn = TrainStep(CausalLMLoss(model), dims, opt, WarmupCosine(1e-2, 1e-3, 1, STEPS), clip_grad=0.5)
    losses = []
    for s, tokens in enumerate(batches):
        res = step_fn(lm_micro_batches(tokens, 2), len(tokens), s)
        assert res.finite
        losses.append(res.loss)
    return model, opt, losses


def _worker(rank: int, world: int, tp: int) -> None:
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=tp, device="cpu")
    assert dims.dp == 2
    gen = torch.Generator().manual_seed(11)
    batches = [torch.randint(0, 53, (8, 10), generator=gen) for _ in range(STEPS)]  # global batch 8
    mine = [b[4 * dims.dp_rank : 4 * dims.dp_rank + 4] for b in batches]
    ddp_model, ddp_opt, ddp_losses = _train(dims, mine, distributed=False)
    zero_model, zero_opt, zero_losses = _train(dims, mine, distributed=True)
    assert_close(torch.tensor(zero_losses), torch.tensor(ddp_losses), rtol=1e-12, name="loss")
    for (name, p), q in zip(zero_model.named_parameters(), ddp_model.parameters()):
        assert_close(p, q, rtol=1e-10, atol=1e-13, name=f"{name} after {STEPS} updates (rank {rank})")
    # memory: each dp rank holds its part of the state, the parts add up to the plain optimizer's
    mine_bytes, full_bytes = optimizer_state_bytes(zero_opt), optimizer_state_bytes(ddp_opt)
    parts = dims.all_gather_object(mine_bytes)
    dp_parts = [parts[r] for r in dims.dp_group_ranks()]
    assert sum(dp_parts) == full_bytes, (dp_parts, full_bytes)
    assert max(dp_parts) <= 0.6 * full_bytes, f"rank {rank}: {mine_bytes} of {full_bytes} bytes of AdamW state"
    # checkpoint: the gathered state is the plain optimizer's state dict (dp rank 0 only)
    zero_sd, ddp_sd = optimizer_state_for_save(zero_opt, dims), optimizer_state_for_save(ddp_opt, dims)
    if dims.dp_rank != 0:
        assert zero_sd is None and ddp_sd is None
        return
    assert sorted(zero_sd["state"]) == sorted(ddp_sd["state"])
    for i, st in ddp_sd["state"].items():
        for k, v in st.items():
            assert_close(zero_sd["state"][i][k], v, rtol=1e-10, atol=1e-16, name=f"state {i} {k}")
    assert [g["params"] for g in zero_sd["param_groups"]] == [g["params"] for g in ddp_sd["param_groups"]]


@pytest.mark.distributed
@pytest.mark.parametrize("tp,world", [(1, 2), (2, 4)], ids=["dp2", "tp2xdp2"])
def test_distributed_optimizer_equals_ddp(tp, world):
    spawn(_worker, world, tp)


def test_one_rank_keeps_plain_adamw():
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.parallel.dims import ParallelDims

    model = build_model(ModelConfig(**CFG), ParallelDims(), seed=1)
    opt = build_optimizer(model, lr=1e-3, dims=ParallelDims(), distributed=True)
    assert isinstance(opt, torch.optim.AdamW)
