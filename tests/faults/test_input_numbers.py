"""Input numbers that used to end in a traceback or pass unchecked (issue 24): a negative seed, a
--max-length beyond the model's positions (evaluate, annotate). Each is one line and exit 1."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lqs.conftest import tiny_mistral, write_dataset
from tests.utils import run_lqs

POSITIONS = 64  # tiny_mistral's max_position_embeddings


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("input_numbers")
    rng = np.random.default_rng()  # fresh entropy
    seqs = [rng.integers(0, 96, rng.integers(6, 14)) for _ in range(8)]
    return {"model": tiny_mistral(d / "model"), "data": write_dataset(d / "data", seqs), "dir": d}


def rng_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**63 - 1, endpoint=True))


def error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_sample_proxy_refuses_a_seed_out_of_range(inputs, tmp_path, seed):
    proc = run_lqs(
        "sample-proxy", "--data", inputs["data"], "--num", 3, "--seed", seed, "--out", tmp_path / "px", check=False
    )
    assert f"--seed must be an integer in [0, 2**63 - 1], got {seed}" in error_line(proc)
    assert not list(tmp_path.iterdir())


def test_seed_rule_is_shared_by_every_step():
    from lqs_megatron.curate.config import OrderConfig
    from lqs_megatron.errors import LQSError
    from lqs_megatron.lqs.config import AnnotateConfig
    from lqs_megatron.scorer.config import PrepareScorerConfig, TrainScorerConfig
    from lqs_megatron.training.config import PretrainConfig

    makers = [
        lambda s: PrepareScorerConfig(proxy="p", scores="s.npy", out="o", seed=s),
        lambda s: TrainScorerConfig(seed=s),
        lambda s: AnnotateConfig(model="m", train="t", target="t", proxy="p", out="o", seed=s),
        lambda s: OrderConfig(data="d", out="o", method="shuffle", seed=s),
        lambda s: PretrainConfig(
            data=["d"], out="o", max_length=8, global_batch_size=1, steps=1, lr=1e-3, model_config="tiny", seed=s
        ),
    ]
    for make in makers:
        make(rng_seed())  # a valid seed passes
        with pytest.raises(LQSError, match=r"--seed must be an integer in \[0, 2\*\*63 - 1\], got -3"):
            make(-3)


@pytest.mark.parametrize("max_length", [POSITIONS + 1, 10**12])
def test_evaluate_refuses_max_length_beyond_the_positions(inputs, max_length):
    proc = run_lqs(
        "evaluate",
        "--model",
        inputs["model"],
        "--data",
        inputs["data"],
        "--max-length",
        max_length,
        "--device",
        "cpu",
        check=False,
    )
    line = error_line(proc)
    assert f"--max-length {max_length} exceeds the {POSITIONS} positions of model" in line
    ok = run_lqs(
        "evaluate",
        "--model",
        inputs["model"],
        "--data",
        inputs["data"],
        "--max-length",
        POSITIONS,
        "--device",
        "cpu",
        check=False,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]


def test_annotate_refuses_max_length_beyond_the_positions(inputs, tmp_path):
    data = inputs["data"]
    proc = run_lqs(
        "annotate",
        "--model",
        inputs["model"],
        "--train",
        data,
        "--target",
        data,
        "--proxy",
        data,
        "--out",
        tmp_path / "out",
        "--steps",
        2,
        "--interval",
        1,
        "--global-batch-size",
        2,
        "--max-length",
        POSITIONS + 1,
        "--device",
        "cpu",
        check=False,
    )
    assert f"--max-length {POSITIONS + 1} exceeds the {POSITIONS} positions of --model" in error_line(proc)
    assert not (tmp_path / "out" / "annotate.json").exists()
