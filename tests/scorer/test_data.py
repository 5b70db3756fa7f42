"""`lqs prepare-scorer-data`: normalisation, split, files, and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.scores import normalize_scores
from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.config import PrepareScorerConfig
from lqs_megatron.scorer.data import load_split, prepare_scorer_data, split_indices
from tests.scorer.helpers import write_token_dataset
from tests.utils import run_lqs


def _proxy(tmp_path: Path, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(4, 500, size=int(rng.integers(1, 40))) for _ in range(n)]
    write_token_dataset(tmp_path / "proxy", seqs)
    return str(tmp_path / "proxy"), seqs


def test_normalize_matches_zscore_and_clips():
    rng = np.random.default_rng(0)
    raw = np.r_[rng.standard_normal(500) * 3 + 7, [100.0, -80.0]]  # two outliers beyond 3 std
    z = normalize_scores(raw)
    ref = np.clip(scipy.stats.zscore(raw, ddof=0), -3, 3)
    np.testing.assert_allclose(z, ref, rtol=1e-12, atol=1e-12)
    assert z.max() == 3.0 and z.min() == -3.0
    assert np.all(normalize_scores(np.full(7, 2.5)) == 0)


def test_split_is_seeded_disjoint_and_complete():
    tr, va = split_indices(100, 13, seed=5)
    assert len(va) == 13 and len(tr) == 87
    assert np.array_equal(np.sort(np.r_[tr, va]), np.arange(100))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    tr2, va2 = split_indices(100, 13, seed=5)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, split_indices(100, 13, seed=6)[1])
    for bad in (0, 100, 101):
        with pytest.raises(LQSError, match="--valid-num"):
            split_indices(100, bad, seed=0)


def test_prepare_cli_writes_split_scores_plot_and_stats(tmp_path):
    prefix, seqs = _proxy(tmp_path, 60)
    raw = np.random.default_rng(1).standard_normal(60) * 2 + 1
    raw[7] = 50.0  # clipped
    np.save(tmp_path / "s.npy", raw)
    out = tmp_path / "data"
    run_lqs("prepare-scorer-data", "--proxy", prefix, "--scores", tmp_path / "s.npy", "--out", out, "--valid-num", "9")
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["num_train"], stats["num_valid"], stats["clipped"]) == (51, 9, 1)
    assert stats["raw_mean"] == pytest.approx(raw.mean()) and stats["raw_std"] == pytest.approx(raw.std())
    assert stats["args"]["valid_num"] == 9
    z = normalize_scores(raw)
    for split in ("train", "valid"):
        s = load_split(out, split)
        idx = np.load(out / f"{split}_indices.npy")
        np.testing.assert_allclose(s.scores, z[idx].astype(np.float32))
        for j, i in enumerate(idx):
            assert np.array_equal(s.data[j], seqs[i])
    both = np.r_[np.load(out / "train_indices.npy"), np.load(out / "valid_indices.npy")]
    assert np.array_equal(np.sort(both), np.arange(60))
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize(
    "case,message",
    [
        ("length", "20 scores for a dataset of 30 sequences"),
        ("nan", "not finite"),
        ("empty", "is empty"),
        ("valid", "--valid-num must be in"),
    ],
)
def test_prepare_bad_input_exits_1_and_leaves_nothing(tmp_path, case, message):
    prefix, _ = _proxy(tmp_path, 30)
    scores = np.random.default_rng(0).standard_normal(30)
    extra = []
    if case == "length":
        scores = scores[:20]
    elif case == "nan":
        scores[4] = np.nan
    elif case == "empty":
        write_token_dataset(tmp_path / "empty", [])
        prefix, scores = str(tmp_path / "empty"), np.zeros(0)
    elif case == "valid":
        extra = ["--valid-num", "30"]
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "data"
    proc = run_lqs(
        "prepare-scorer-data", "--proxy", prefix, "--scores", tmp_path / "s.npy", "--out", out, *extra, check=False
    )
    assert proc.returncode == 1
    assert message in proc.stderr and "lqs prepare-scorer-data: error:" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("data*"))


def test_prepare_failure_inside_the_write_leaves_no_directory(tmp_path, monkeypatch):
    prefix, _ = _proxy(tmp_path, 30)
    np.save(tmp_path / "s.npy", np.arange(30.0))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lqs_megatron.scorer.data.plot_scores", boom)
    with pytest.raises(RuntimeError):
        prepare_scorer_data(PrepareScorerConfig(prefix, tmp_path / "s.npy", tmp_path / "data", valid_num=3))
    assert not list(tmp_path.glob("data*"))


def test_prepare_records_the_tokenizer_of_the_proxy(tmp_path, tiny_tokenizer):
    prefix, _ = _proxy(tmp_path, 20)
    (tmp_path / "proxy.stats.json").write_text(json.dumps({"args": {"tokenizer_dir": tiny_tokenizer}}))
    np.save(tmp_path / "s.npy", np.arange(20.0))
    stats = prepare_scorer_data(PrepareScorerConfig(prefix, tmp_path / "s.npy", tmp_path / "data", valid_num=4))
    assert stats["tokenizer"]["path"] == str(Path(tiny_tokenizer).resolve())
    assert stats["retokenized"] is False
    assert len(IndexedDataset(tmp_path / "data" / "valid")) == 4


def test_prepare_retokenizes_for_the_scorer_tokenizer(tmp_path, tiny_tokenizer, tmp_path_factory):
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer
    from tests.conftest import demo_texts
    from tests.scorer.helpers import degraded_docs, write_dataset

    dst = tmp_path_factory.mktemp("dst") / "tok"
    train_tokenizer(demo_texts(), dst, vocab_size=700, num_threads=1)
    texts, scores = degraded_docs(25, seed=2)
    write_dataset(tmp_path / "proxy", tiny_tokenizer, texts)
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "data"
    stats = prepare_scorer_data(
        PrepareScorerConfig(
            tmp_path / "proxy",
            tmp_path / "s.npy",
            out,
            valid_num=5,
            src_tokenizer=tiny_tokenizer,
            dst_tokenizer=str(dst),
            workers=0,
        )
    )
    assert stats["retokenized"] and stats["tokenizer"]["path"] == str(dst.resolve())
    tok = load_tokenizer(str(dst))
    for split in ("train", "valid"):
        s = load_split(out, split)
        for j, i in enumerate(np.load(out / f"{split}_indices.npy")):
            assert s.data[j].tolist() == tok(texts[i]).input_ids + [tok.eos_token_id]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("proxy")) == []
    same = prepare_scorer_data(
        PrepareScorerConfig(
            tmp_path / "proxy",
            tmp_path / "s.npy",
            tmp_path / "same",
            valid_num=5,
            src_tokenizer=tiny_tokenizer,
            dst_tokenizer=tiny_tokenizer,
        )
    )
    assert not same["retokenized"]
