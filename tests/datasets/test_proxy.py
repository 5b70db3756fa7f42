"""`lqs sample-proxy`: a seeded uniform sample without replacement, written in corpus order."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.proxy import sample_indices
from lqs_megatron.errors import LQSError
from tests.curate.test_cli import make_dataset
from tests.utils import run_lqs


def test_sample_indices_properties():
    for n, num, seed in ((10, 0, 0), (10, 10, 1), (1000, 37, 2), (5, 3, 3)):
        idx = sample_indices(n, num, seed)
        assert idx.dtype == np.int64 and len(idx) == num
        assert np.all(np.diff(idx) > 0) and (num == 0 or (idx[0] >= 0 and idx[-1] < n))  # distinct, ascending
        assert np.array_equal(idx, sample_indices(n, num, seed))
    assert sample_indices(10, 10, 5).tolist() == list(range(10))
    assert sample_indices(1000, 50, 1).tolist() != sample_indices(1000, 50, 2).tolist()
    with pytest.raises(LQSError, match="larger than the dataset"):
        sample_indices(5, 6, 0)
    with pytest.raises(LQSError, match="--num must be >= 0"):
        sample_indices(5, -1, 0)


def test_sample_is_uniform():
    """Over 4000 seeds every index is drawn about num/n of the time, and every pair about equally often."""
    n, num, trials = 12, 4, 4000
    counts = np.zeros(n)
    pairs = np.zeros((n, n))
    for seed in range(trials):
        idx = sample_indices(n, num, seed)
        counts[idx] += 1
        pairs[np.ix_(idx, idx)] += 1
    expected = trials * num / n  # 1333.3, binomial sd ~ 30
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts
    off = pairs[~np.eye(n, dtype=bool)]
    expected_pair = trials * num * (num - 1) / (n * (n - 1))  # 363.6
    assert np.all(np.abs(off - expected_pair) < 6 * np.sqrt(expected_pair)), off


def test_cli_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    seqs = make_dataset(tmp_path / "corpus", rng, n_docs=15, dtype=np.int32)
    run_lqs("sample-proxy", "--data", tmp_path / "corpus", "--num", "7", "--seed", "4", "--out", tmp_path / "proxy")
    idx = np.load(tmp_path / "proxy.indices.npy")
    assert idx.dtype == np.int64 and idx.tolist() == sample_indices(len(seqs), 7, 4).tolist()
    ds = IndexedDataset(tmp_path / "proxy")
    assert ds.dtype == np.int32 and len(ds) == 7
    assert ds.document_indices.tolist() == list(range(8))  # each sampled sequence its own document
    for j, i in enumerate(idx):
        assert np.array_equal(ds[j], seqs[i])


def test_cli_errors(tmp_path):
    make_dataset(tmp_path / "corpus", np.random.default_rng(0), n_docs=2)
    n = len(IndexedDataset(tmp_path / "corpus"))
    proc = run_lqs(
        "sample-proxy",
        "--data",
        tmp_path / "corpus",
        "--num",
        str(n + 1),
        "--seed",
        "0",
        "--out",
        tmp_path / "proxy",
        check=False,
    )
    assert proc.returncode == 1 and f"--num {n + 1} is larger than the dataset ({n} sequences)" in proc.stderr
    proc = run_lqs(
        "sample-proxy", "--data", tmp_path / "absent", "--num", "1", "--out", tmp_path / "proxy", check=False
    )
    assert proc.returncode == 1 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("proxy")]
