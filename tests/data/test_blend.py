"""Megatron blend strings: `--data "0.3 P1 0.7 P2"` is `--data P1 P2 --data-weights 0.3 0.7`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lqs_megatron.errors import LQSError
from lqs_megatron.training.data import SampleStream, parse_blend
from tests.training.conftest import tiny_data, write_tokens  # noqa: F401 - the fixture
from tests.utils import run_lqs


def test_parse_blend_forms():
    assert parse_blend(["0.3 a/p1 0.7 b/p2"]) == (["a/p1", "b/p2"], [0.3, 0.7])
    assert parse_blend(["0.3", "a/p1", "0.7", "b/p2"]) == (["a/p1", "b/p2"], [0.3, 0.7])
    assert parse_blend("2 x 1e-1 y") == (["x", "y"], [2.0, 0.1])
    assert parse_blend(["a", "b"], [1, 3]) == (["a", "b"], [1.0, 3.0])
    assert parse_blend(["my data/p1"]) == (["my data/p1"], None)  # plain prefixes are kept whole
    for items, weights, msg in [
        (["0.3 a 0.7"], None, "expected pairs of weight and prefix"),
        (["0.3 a b c"], None, "'b' is not a weight"),
        (["0.3 0.5"], None, "'0.5' should be a dataset prefix"),
        (["0.3 a"], [1.0], "not both"),
        (["a", "b"], [1.0], "has 1 values for 2"),
        (["-1 a 2 b"], None, "finite and >= 0"),
        (["0 a 0 b"], None, "positive sum"),
        (["nan a 1 b"], None, "finite"),
    ]:
        with pytest.raises(LQSError, match=msg):
            parse_blend(items, weights)


def test_blend_string_gives_the_same_samples(tmp_path):
    rng = np.random.default_rng(0)
    a = write_tokens(tmp_path / "a", [rng.integers(0, 500, rng.integers(5, 40)) for _ in range(30)])
    b = write_tokens(tmp_path / "b", [rng.integers(0, 500, rng.integers(5, 40)) for _ in range(20)])
    plain = SampleStream([a, b], 16, 50, weights=[0.3, 0.7], shuffle=True, seed=3)
    blend = SampleStream([f"0.3 {a} 0.7 {b}"], 16, 50, shuffle=True, seed=3)
    assert plain.batch(range(50)).tolist() == blend.batch(range(50)).tolist()
    assert np.bincount(blend.which).tolist() == [15, 35]


@pytest.mark.slow
def test_pretrain_blend_string_equals_data_weights(tiny_data, tmp_path):  # noqa: F811
    half = write_tokens(tmp_path / "half", [np.arange(3, 40) % 500 for _ in range(12)])
    common = [
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        tiny_data["tokenizer"],
        "--steps",
        "3",
        "--max-length",
        "32",
        "--global-batch-size",
        "4",
        "--micro-batch-size",
        "4",
        "--lr",
        "3e-3",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    run_lqs(*common, "--data", f"0.3 {tiny_data['train']} 0.7 {half}", "--out", tmp_path / "blend", env=env)
    run_lqs(
        *common, "--data", tiny_data["train"], half, "--data-weights", "0.3", "0.7", "--out", tmp_path / "w", env=env
    )

    def losses(out):
        return [json.loads(x)["loss"] for x in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in x]

    assert len(losses(tmp_path / "blend")) == 3 and losses(tmp_path / "blend") == losses(tmp_path / "w")
