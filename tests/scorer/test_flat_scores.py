"""Constant or nearly constant annotation scores (issue 24): `prepare-scorer-data` refuses them (a flag
goes on with a warning), `train-scorer` warns; a scorer trained on them would reach validation Pearson 0."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.scores import flat_scores
from tests.scorer.helpers import degraded_docs, write_dataset


def test_flat_scores_kinds():
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    assert flat_scores(base) is None and flat_scores(base.astype(np.float32)) is None
    c = float(rng.normal())
    assert flat_scores(np.full(500, c)) == f"constant (all {c:g})"
    noise = np.float32(c) + rng.normal(size=500) * abs(c) * 1e-8  # rounding noise around one value
    assert flat_scores(noise).startswith("nearly constant (std ")
    mostly = np.where(rng.random(500) < 0.995, 0.0, rng.normal(size=500))
    mostly[:2] = 0.0
    mostly[-1] = 1.0
    assert flat_scores(mostly).startswith(f"nearly constant ({int((mostly == 0).sum())} of 500 are 0)")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("flat")
    texts, _ = degraded_docs(80, seed=4)
    write_dataset(d / "proxy", tiny_tokenizer, texts)
    return d


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_prepare_refuses_and_train_warns(proxy, tiny_tokenizer, tmp_path, kind, capsys, caplog):
    rng = np.random.default_rng(len(kind))
    c = rng.normal()
    scores = np.full(80, c) if kind == "constant" else c + rng.normal(size=80) * abs(c) * 2e-7  # float32 ulps
    np.save(tmp_path / "s.npy", scores.astype(np.float32))
    args = ["prepare-scorer-data", "--proxy", str(proxy / "proxy"), "--scores", str(tmp_path / "s.npy")]
    assert main([*args, "--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lqs prepare-scorer-data: error: {tmp_path / 's.npy'}: the scores are "), err
    assert "learns nothing" in err and "--allow-constant-scores" in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--out", str(tmp_path / "data"), "--allow-constant-scores", "--workers", "0"]) == 0
    assert "learns nothing" in caplog.text
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["scores_flat"].startswith(
        "constant" if kind == "constant" else "nearly constant"
    )
    caplog.clear()
    train = [
        "train-scorer",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "sc"),
        "--model-config",
        "tiny",
        "--tokenizer",
        tiny_tokenizer,
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--no-tensorboard",
    ]
    with caplog.at_level(logging.WARNING, logger="lqs_megatron.scorer.train"):
        assert main(train) == 0
    assert f"{tmp_path / 'data'}: the scores are " in caplog.text and "learns nothing" in caplog.text
