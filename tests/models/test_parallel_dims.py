"""ParallelDims arithmetic (no process group) and the tp/vocabulary checks of parallelize."""

import pytest
import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.models.parallelize import check_tp, padded_vocab_size, tp_dim_of
from lqs_megatron.parallel.dims import ParallelDims, init_distributed


def test_layout_world_8_tp_2():
    groups_tp, groups_dp = set(), set()
    for r in range(8):
        d = ParallelDims(world_size=8, tp=2, rank=r)
        assert d.dp == 4 and d.tp_rank == r % 2 and d.dp_rank == r // 2
        assert r in d.tp_group_ranks() and r in d.dp_group_ranks()
        groups_tp.add(tuple(d.tp_group_ranks()))
        groups_dp.add(tuple(d.dp_group_ranks()))
    assert sorted(groups_tp) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert sorted(groups_dp) == [(0, 2, 4, 6), (1, 3, 5, 7)]
    d = ParallelDims(world_size=8, tp=4, rank=6)
    assert (d.dp, d.tp_rank, d.dp_rank) == (2, 2, 1)
    assert d.all_tp_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]] and d.all_dp_groups()[2] == [2, 6]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(world_size=8, tp=3), "--tp 3 does not divide the world size 8"),
        (dict(world_size=8, tp=0), "--tp must be >= 1"),
        (dict(world_size=2, tp=1, rank=2), "rank 2 is outside"),
        (dict(world_size=0), "world size must be >= 1"),
    ],
)
def test_bad_dims_name_the_flag(kw, match):
    with pytest.raises(LQSError, match=match):
        ParallelDims(**kw)


def test_single_process_needs_no_torchrun(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    d = init_distributed(tp=1, device="cpu")
    assert (d.world_size, d.tp, d.dp, d.rank) == (1, 1, 1, 0) and d.tp_group is None and d.dp_group is None
    t = torch.tensor([3.0])
    assert d.all_reduce(t).item() == 3.0  # identity
    with pytest.raises(LQSError, match="--tp 2 does not divide the world size 1"):
        init_distributed(tp=2, device="cpu")


def test_check_tp_names_the_field():
    cfg = load_model_config("tiny", vocab_size=100)  # 4 heads, 2 kv heads
    check_tp(cfg, 2)
    with pytest.raises(LQSError, match="--tp 4 does not divide num_kv_heads = 2"):
        check_tp(cfg, 4)
    with pytest.raises(LQSError, match="--tp 3 does not divide num_heads = 4"):
        check_tp(cfg, 3)


def test_padded_vocab_and_split_dims():
    assert padded_vocab_size(61, 1) == 61
    assert padded_vocab_size(61, 2) == 62
    assert padded_vocab_size(32000, 8, 128) == 32768
    assert padded_vocab_size(1024, 2, 128) == 1024
    model = Decoder(ModelConfig(vocab_size=10))
    dims = {n: tp_dim_of(n) for n, _ in model.named_parameters()}
    assert dims["tok_embeddings.weight"] == 0 and dims["output.weight"] == 0
    assert dims["layers.1.attention.wk.weight"] == 0 and dims["layers.0.feed_forward.w3.weight"] == 0
    assert dims["layers.0.attention.wo.weight"] == 1 and dims["layers.1.feed_forward.w2.weight"] == 1
    assert dims["layers.0.ffn_norm.weight"] is None and dims["norm.weight"] is None
