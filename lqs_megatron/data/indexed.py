"""Megatron's mmap indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``), read and written.

Byte-compatible with megatron-core's ``IndexedDataset`` / ``IndexedDatasetBuilder``
(format "MMIDIDX", version 1, no sequence modes); ``data/README.md`` lists the fields.

- ``.bin``: the tokens of every sequence, back to back, in the dataset's dtype.
- ``.idx``: header, then ``sequence_lengths`` (int32, N), ``sequence_pointers``
  (int64, N, byte offsets into ``.bin``), ``document_indices`` (int64, D+1, the
  sequence index where each document starts, ending with N).

Reading is zero-copy: the arrays are views into ``np.memmap``s. Writing goes through
:class:`IndexedDatasetWriter`, which writes under a temporary prefix and renames the
pair into place only when complete (see :mod:`lqs_megatron.utils.atomic`).
"""

from __future__ import annotations

import contextlib
import os
import struct
from enum import IntEnum
from pathlib import Path

import numpy as np

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_prefix

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1


class DType(IntEnum):
    """The dtype codes of the ``.idx`` header (megatron-core's ``DType`` enum)."""

    uint8 = 1
    int8 = 2
    int16 = 3
    int32 = 4
    int64 = 5
    float64 = 6
    float32 = 7
    uint16 = 8

    @classmethod
    def code(cls, dtype: np.dtype | type) -> int:
        return cls[np.dtype(dtype).name].value

    @classmethod
    def numpy(cls, code: int) -> np.dtype:
        return np.dtype(cls(code).name)


def optimal_dtype(vocab_size: int | None) -> np.dtype:
    """The token dtype megatron-core picks for a vocabulary: uint16 below 65500, else int32."""
    return np.dtype(np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32)


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def dataset_exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(bin_path(prefix)) and os.path.isfile(idx_path(prefix))


class IndexedDataset:
    """Read-only view of an indexed dataset.

    ``ds[i]`` is sequence ``i`` as a numpy view (no copy); ``ds.get(i, offset, length)``
    a slice of it. ``len(ds)`` is the number of sequences.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        ipath, bpath = idx_path(prefix), bin_path(prefix)
        for p in (ipath, bpath):
            if not os.path.isfile(p):
                raise LQSError(f"indexed dataset {self.prefix!r}: missing {p} (expected PREFIX.bin and PREFIX.idx)")
        with open(ipath, "rb") as f:
            head = f.read(len(INDEX_HEADER) + 8 + 1 + 8 + 8)
        if len(head) < 34 or head[:9] != INDEX_HEADER:
            raise LQSError(f"{ipath}: not a Megatron indexed dataset index (bad header)")
        (version,) = struct.unpack("<Q", head[9:17])
        if version != INDEX_VERSION:
            raise LQSError(f"{ipath}: index version {version} is not supported (expected {INDEX_VERSION})")
        try:
            self.dtype = DType.numpy(head[17])
        except ValueError:
            raise LQSError(f"{ipath}: unknown dtype code {head[17]}") from None
        n, d = struct.unpack("<QQ", head[18:34])
        expected = 34 + 4 * n + 8 * n + 8 * d
        size = os.path.getsize(ipath)
        if size < expected:
            raise LQSError(f"{ipath}: truncated index ({size} bytes, expected at least {expected})")
        self._idx = np.memmap(ipath, mode="r", dtype=np.uint8) if size else None
        off = 34
        self.sequence_lengths = np.frombuffer(self._idx, dtype=np.int32, count=n, offset=off)
        off += 4 * n
        self.sequence_pointers = np.frombuffer(self._idx, dtype=np.int64, count=n, offset=off)
        off += 8 * n
        self.document_indices = np.frombuffer(self._idx, dtype=np.int64, count=d, offset=off)
        bsize = os.path.getsize(bpath)
        need = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n else 0
        if bsize < need:
            raise LQSError(f"{bpath}: truncated data file ({bsize} bytes, the index needs {need})")
        self._bin = np.memmap(bpath, mode="r", dtype=np.uint8) if bsize else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        return np.frombuffer(
            self._bin, dtype=self.dtype, count=int(self.sequence_lengths[i]), offset=int(self.sequence_pointers[i])
        )

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (a view)."""
        seq = self[i]
        return seq[offset:] if length is None else seq[offset : offset + length]

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    @property
    def num_documents(self) -> int:
        return max(len(self.document_indices) - 1, 0)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


def write_index(path: str | os.PathLike, dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray):
    """Write an ``.idx`` file exactly as megatron-core's ``_IndexWriter`` does."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", DType.code(dtype)))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(docs)))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(docs.tobytes(order="C"))


class IndexedDatasetWriter:
    """Write an indexed dataset atomically.

    >>> with IndexedDatasetWriter("out/corpus", dtype=np.uint16) as w:   # doctest: +SKIP
    ...     w.add_document([5, 6, 7, 2])           # one sequence, one document
    ...     w.add_item([1, 2]); w.add_item([3, 2]); w.end_document()   # two sequences, one document

    Nothing appears at ``PREFIX.bin/.idx`` until the ``with`` block exits cleanly.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type = np.int32):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        DType.code(self.dtype)  # validates
        self._stack: contextlib.ExitStack | None = None
        self._lengths: list[int] = []
        self._docs: list[int] = [0]
        self._tmp: str | None = None
        self._bin = None

    def __enter__(self) -> IndexedDatasetWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_prefix(self.prefix))
        self._bin = self._stack.enter_context(open(bin_path(self._tmp), "wb"))
        return self

    def add_item(self, tokens) -> None:
        """Append one sequence (it joins the current document)."""
        arr = np.asarray(tokens)
        if arr.size and arr.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            if arr.dtype.kind in "iu" and (arr.min() < info.min or arr.max() > info.max):
                raise LQSError(f"token ids out of range for dtype {self.dtype}: [{arr.min()}, {arr.max()}]")
            arr = arr.astype(self.dtype)
        self._bin.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self._lengths.append(int(arr.size))

    def end_document(self) -> None:
        """Close the current document (sequences added since the last call)."""
        self._docs.append(len(self._lengths))

    def add_document(self, tokens, lengths: list[int] | None = None) -> None:
        """Append one document: a single sequence, or ``lengths`` sequences cut from ``tokens``."""
        if lengths is None:
            self.add_item(tokens)
        else:
            arr = np.asarray(tokens)
            start = 0
            for n in lengths:
                self.add_item(arr[start : start + n])
                start += n
        self.end_document()

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._bin.close()
                write_index(idx_path(self._tmp), self.dtype, np.asarray(self._lengths), np.asarray(self._docs))
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        return False
