"""Indexed datasets against megatron-core: same bytes, each reads the other's; native vs Python builder."""

import os
import struct

import numpy as np
import pytest
import torch

from lqs_megatron import _C
from lqs_megatron.data.datasets.indexed import (
    DType,
    IndexedDataset,
    IndexedDatasetWriter,
    dataset_exists,
    optimal_dtype,
    write_index,
    write_index_py,
)
from lqs_megatron.errors import LQSError

mcore = pytest.importorskip("megatron.core.datasets.indexed_dataset")

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64]


def _random_docs(rng, dtype, n_docs=40):
    """Documents as lists of sequences (some empty), random ids over the dtype's range."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        lo, hi = -1000, 1000
    else:
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -(2**40)), min(int(info.max), 2**40)
    docs = []
    for _ in range(n_docs):
        seqs = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(0, 60)) if rng.random() > 0.1 else 0
            seqs.append(rng.integers(lo, hi, size=n, endpoint=True).astype(dtype))
        docs.append(seqs)
    return docs


def _write_ours(prefix, dtype, docs, native=True, style="mixed"):
    with IndexedDatasetWriter(prefix, dtype, native=native) as w:
        for i, seqs in enumerate(docs):
            if style == "items" or (style == "mixed" and i % 3 == 0):
                for s in seqs:
                    w.add_item(s)
                w.end_document()
            elif style == "mixed" and i % 3 == 1 and len(seqs) == 1:
                w.add_documents(seqs[0], [len(seqs[0])])
            else:
                w.add_document(np.concatenate(seqs), [len(s) for s in seqs])
    return w


def _write_mcore(prefix, dtype, docs):
    b = mcore.IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for i, seqs in enumerate(docs):
        if i % 2:
            for s in seqs:
                b.add_item(torch.from_numpy(np.ascontiguousarray(s)))
            b.end_document()
        else:
            b.add_document(np.concatenate(seqs), [len(s) for s in seqs])
    b.finalize(f"{prefix}.idx")


def _same_files(a, b):
    for ext in (".bin", ".idx"):
        with open(f"{a}{ext}", "rb") as fa, open(f"{b}{ext}", "rb") as fb:
            assert fa.read() == fb.read(), f"{ext} differs"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bytes_identical_to_megatron_core_and_both_read_each_other(tmp_path, dtype):
    rng = np.random.default_rng(7)
    docs = _random_docs(rng, dtype)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    w = _write_ours(ours, dtype, docs)
    _write_mcore(str(theirs), dtype, docs)
    _same_files(ours, theirs)
    seqs = [s for d in docs for s in d]
    assert (w.num_sequences, w.num_documents, w.num_tokens) == (len(seqs), len(docs), sum(map(len, seqs)))

    for reader_prefix in (ours, theirs):
        m = mcore.IndexedDataset(str(reader_prefix), mmap=True)
        assert len(m) == len(seqs)
        np.testing.assert_array_equal(m.document_indices, np.cumsum([0] + [len(d) for d in docs]))
        for i, s in enumerate(seqs):
            np.testing.assert_array_equal(m[i], s)
        ds = IndexedDataset(reader_prefix)
        assert ds.dtype == np.dtype(dtype) and len(ds) == len(seqs) and ds.num_documents == len(docs)
        np.testing.assert_array_equal(ds.document_indices, m.document_indices)
        np.testing.assert_array_equal(ds.sequence_lengths, m.sequence_lengths)
        np.testing.assert_array_equal(ds.sequence_pointers, m.index.sequence_pointers)
        for i, s in enumerate(seqs):
            np.testing.assert_array_equal(ds[i], s)
            if len(s) > 3:
                np.testing.assert_array_equal(ds.get(i, 1, 2), s[1:3])


@pytest.mark.parametrize("style", ["mixed", "items", "documents"])
def test_native_builder_equals_python_reference(tmp_path, style):
    rng = np.random.default_rng(11)
    docs = _random_docs(rng, np.uint16, n_docs=200)
    _write_ours(tmp_path / "native", np.uint16, docs, native=True, style=style)
    _write_ours(tmp_path / "python", np.uint16, docs, native=False, style=style)
    _same_files(tmp_path / "native", tmp_path / "python")


def test_large_items_bypass_the_buffer_and_small_ones_fill_it(tmp_path):
    rng = np.random.default_rng(3)
    # a few sequences larger than the 4 MiB buffer among many small ones, int64 input -> int32 dataset
    docs = [[rng.integers(0, 2**31 - 1, size=n)] for n in [5, 3_000_000, 7, 1, 1_100_000, 2]]
    _write_ours(tmp_path / "big", np.int32, docs, style="documents")
    _write_mcore(str(tmp_path / "ref"), np.int32, [[d[0].astype(np.int32)] for d in docs])
    _same_files(tmp_path / "big", tmp_path / "ref")


def test_empty_dataset_and_empty_sequences(tmp_path):
    with IndexedDatasetWriter(tmp_path / "none", np.uint16) as w:
        pass
    assert w.num_documents == 0
    ds = IndexedDataset(tmp_path / "none")
    assert len(ds) == 0 and ds.num_documents == 0 and ds.num_tokens == 0
    b = mcore.IndexedDatasetBuilder(str(tmp_path / "none_ref.bin"), dtype=np.uint16)
    b.finalize(str(tmp_path / "none_ref.idx"))
    _same_files(tmp_path / "none", tmp_path / "none_ref")

    with IndexedDatasetWriter(tmp_path / "empties", np.int32) as w:
        w.add_item([])
        w.end_document()
        w.add_documents(np.zeros(0, np.int64), [0, 0])
    ds = IndexedDataset(tmp_path / "empties")
    assert list(ds.sequence_lengths) == [0, 0, 0] and list(ds.document_indices) == [0, 1, 2, 3]
    assert ds[2].size == 0


def test_big_offsets_are_64_bit(tmp_path):
    """Byte pointers past 2**32 (a > 4 GiB .bin) without writing one: the index alone."""
    lengths = np.array([2**31 - 1] * 5 + [3], dtype=np.int32)
    for dtype in (np.uint16, np.int64):
        item = np.dtype(dtype).itemsize
        expect = np.concatenate([[0], np.cumsum(lengths[:-1].astype(np.int64) * item)])
        assert expect[-1] > 2**32
        np.testing.assert_array_equal(_C.sequence_pointers(lengths, item), expect)
        docs = np.array([0, 2, 6], dtype=np.int64)
        write_index(tmp_path / "n.idx", dtype, lengths, docs)
        write_index_py(tmp_path / "p.idx", dtype, lengths, docs)
        with mcore._IndexWriter(str(tmp_path / "m.idx"), dtype) as mw:
            mw.write(lengths.tolist(), None, docs.tolist())
        data = (tmp_path / "n.idx").read_bytes()
        assert data == (tmp_path / "p.idx").read_bytes() == (tmp_path / "m.idx").read_bytes()
        n = len(lengths)
        np.testing.assert_array_equal(np.frombuffer(data, np.int64, count=n, offset=34 + 4 * n), expect)


def test_header_fields(tmp_path):
    with IndexedDatasetWriter(tmp_path / "h", np.uint16) as w:
        w.add_document([1, 2, 3])
        w.add_document([4, 5], [1, 1])
    raw = (tmp_path / "h.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<QBQQ", raw[9:34]) == (1, DType.uint16, 3, 3)
    assert DType.numpy(raw[17]) == np.uint16 and DType.code(np.int32) == 4


def test_out_of_range_and_float_ids_are_errors_and_leave_no_output(tmp_path):
    for bad in (np.array([1, 70000]), np.array([-1, 2]), np.array([1.5, 2.0])):
        for native in (True, False):
            with pytest.raises(LQSError, match="does not fit|out of range|cannot store"):
                with IndexedDatasetWriter(tmp_path / "bad", np.uint16, native=native) as w:
                    w.add_document([1, 2, 3])
                    w.add_item(bad)
            assert not dataset_exists(tmp_path / "bad")
            assert not any(p.name.startswith("bad") for p in tmp_path.iterdir())
    with pytest.raises(LQSError, match="lengths sum to 3 tokens, the array holds 4"):
        with IndexedDatasetWriter(tmp_path / "bad", np.int32) as w:
            w.add_documents(np.arange(4), [1, 2])


def test_killed_writer_leaves_nothing_that_looks_finished(tmp_path):
    class Boom(Exception):
        pass

    with IndexedDatasetWriter(tmp_path / "done", np.int32) as w:
        w.add_document([1])
    before = (tmp_path / "done.idx").read_bytes()
    with pytest.raises(Boom):
        with IndexedDatasetWriter(tmp_path / "done", np.int32) as w:
            w.add_document([7, 8, 9])
            raise Boom
    assert (tmp_path / "done.idx").read_bytes() == before  # the old dataset is untouched
    assert sorted(os.listdir(tmp_path)) == ["done.bin", "done.idx"]


def test_optimal_dtype_matches_megatron_core():
    for vocab in (512, 65499, 65500, 65536, 128256, None):
        assert optimal_dtype(vocab) == np.dtype(mcore.DType.optimal_dtype(vocab))
