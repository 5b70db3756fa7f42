"""`lqs merge`: byte-identical to megatron-core's add_index for one dtype; upcasts; clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from lqs_megatron.data.datasets.merge import merge_datasets
from lqs_megatron.errors import LQSError
from tests.curate.test_cli import make_dataset
from tests.utils import run_lqs


def megatron_merge(prefixes, out, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{out}.bin", dtype=dtype)
    for p in prefixes:
        builder.add_index(str(p))
    builder.finalize(f"{out}.idx")


def test_merge_equals_megatron_core(tmp_path):
    rng = np.random.default_rng(1)
    parts = [make_dataset(tmp_path / f"part{k}", rng, n_docs=int(rng.integers(1, 6))) for k in range(3)]
    # an empty dataset in the middle is fine too
    with IndexedDatasetWriter(tmp_path / "empty", np.uint16):
        pass
    prefixes = [tmp_path / "part0", tmp_path / "empty", tmp_path / "part1", tmp_path / "part2"]
    run_lqs("merge", "--data", *prefixes, "--out", tmp_path / "ours")
    megatron_merge(prefixes, tmp_path / "theirs", np.uint16)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes(), ext

    ds = IndexedDataset(tmp_path / "ours")
    all_seqs = [s for part in parts for s in part]
    assert len(ds) == len(all_seqs) and all(np.array_equal(ds[i], s) for i, s in enumerate(all_seqs))
    # document starts: each input's own, shifted by the sequences before it
    expected_docs, offset = [0], 0
    for p in prefixes:
        part = IndexedDataset(p)
        expected_docs += (part.document_indices[1:] + offset).tolist()
        offset += len(part)
    assert ds.document_indices.tolist() == expected_docs
    assert ds.num_documents == sum(IndexedDataset(p).num_documents for p in prefixes)


def test_merge_upcasts_integer_dtypes(tmp_path):
    rng = np.random.default_rng(2)
    a = make_dataset(tmp_path / "a", rng, n_docs=3, dtype=np.uint16)
    b = make_dataset(tmp_path / "b", rng, n_docs=2, dtype=np.int32)
    info = merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    ds = IndexedDataset(tmp_path / "m")
    assert info["dtype"] == "int32" and ds.dtype == np.int32
    assert all(np.array_equal(ds[i], s) for i, s in enumerate(a + b))


def test_merge_errors(tmp_path):
    rng = np.random.default_rng(3)
    make_dataset(tmp_path / "a", rng, n_docs=2)
    with IndexedDatasetWriter(tmp_path / "f", np.float32) as w:
        w.add_document(np.array([0.5, 1.5], dtype=np.float32))
    with pytest.raises(LQSError, match="only integer dtypes upcast"):
        merge_datasets([tmp_path / "a", tmp_path / "f"], tmp_path / "m")
    proc = run_lqs("merge", "--data", tmp_path / "a", tmp_path / "missing", "--out", tmp_path / "m", check=False)
    assert proc.returncode == 1 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_lqs("merge", "--data", tmp_path / "a", tmp_path / "a", "--out", tmp_path / "a", check=False)
    assert proc.returncode == 1 and "is the input dataset of --data" in proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("m")]
