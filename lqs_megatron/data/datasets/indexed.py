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
import sys
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
                raise LQSError(
                    f"indexed dataset {self.prefix!r}: missing {p} (expected PREFIX.bin and PREFIX.idx"
                    + (
                        ", or a view PREFIX.view.json: open it with data.datasets.view.open_dataset)"
                        if os.path.isfile(f"{prefix}.view.json")
                        else ")"
                    )
                )
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
            codes = ", ".join(f"{d.value} {d.name}" for d in DType)
            raise LQSError(
                f"{ipath}: unknown dtype code {head[17]} in the header (valid codes: {codes}); the index is corrupt "
                "or not a Megatron indexed dataset"
            ) from None
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
        _check_pointers(ipath, self.dtype, self.sequence_lengths, self.sequence_pointers)
        bsize = os.path.getsize(bpath)
        need = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n else 0
        if bsize != need:  # a Megatron .bin is exactly what its .idx describes, no more and no less
            which = "truncated data file" if bsize < need else "data file longer than its index"
            raise LQSError(
                f"{bpath}: {which} ({bsize} bytes, {ipath} describes exactly {need}): the two files do not belong "
                "together, most likely a copy or rsync interrupted between them; copy both again"
            )
        self._bin = np.memmap(bpath, mode="r", dtype=np.uint8) if bsize else np.zeros(0, dtype=np.uint8)
        self.data_path = bpath

    #: False here; True for a :class:`~lqs_megatron.data.datasets.view.DatasetView`
    is_view = False

    @property
    def index_files(self) -> list[str]:
        """The files besides :attr:`data_path` (the token file) that define the sequences: ``PREFIX.idx``."""
        return [idx_path(self.prefix)]

    def root(self, indices: np.ndarray) -> tuple[IndexedDataset, np.ndarray]:
        """``(dataset, positions)``: where sequences ``indices`` of this dataset are stored (here: itself, as given;
        a view maps them into its source)."""
        return self, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def position(self, i: int) -> int:
        """Sequence number ``i`` (negative from the end) as a position in ``0 .. len - 1``; IndexError outside."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        return i

    def __getitem__(self, i: int) -> np.ndarray:
        i = self.position(i)
        return np.frombuffer(
            self._bin, dtype=self.dtype, count=int(self.sequence_lengths[i]), offset=int(self.sequence_pointers[i])
        )

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (a view)."""
        seq = self[i]
        return seq[offset:] if length is None else seq[offset : offset + length]

    def span(self, start: int, stop: int) -> np.ndarray:
        """The tokens of sequences ``start .. stop-1``, back to back (one view; they are contiguous)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"sequences [{start}, {stop}) out of range for {len(self)} sequences")
        if start == stop:
            return np.zeros(0, dtype=self.dtype)
        count = int(self.sequence_lengths[start:stop].sum(dtype=np.int64))
        return np.frombuffer(self._bin, dtype=self.dtype, count=count, offset=int(self.sequence_pointers[start]))

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    @property
    def num_documents(self) -> int:
        return max(len(self.document_indices) - 1, 0)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


_POINTER_SAMPLE = 4096


def _check_pointers(ipath: str, dtype: np.dtype, lengths: np.ndarray, pointers: np.ndarray) -> None:
    """The first sequences' byte pointers must step by ``length * itemsize``: a header dtype that disagrees with
    the data (pointers that step by another item size) is an error, not garbage tokens or "truncated data"."""
    k = min(len(lengths), _POINTER_SAMPLE)
    if k < 2:
        return
    steps = np.diff(pointers[:k].astype(np.int64))
    tokens = lengths[: k - 1].astype(np.int64)
    if np.array_equal(steps, tokens * dtype.itemsize) or not tokens.sum():
        return
    size = steps.sum() / tokens.sum()
    if np.array_equal(steps, tokens * size) and size in (1, 2, 4, 8):  # packed, but with another item size
        fits = [np.dtype(d).name for d in (np.uint8, np.uint16, np.int32, np.int64) if np.dtype(d).itemsize == size]
        raise LQSError(
            f"{ipath}: the header says dtype {dtype} ({dtype.itemsize} bytes per token), but the sequence pointers "
            f"step by {int(size)} bytes per token (a {' or '.join(fits)} dataset): the header's dtype code is "
            "wrong or the .idx belongs to another .bin; rebuild the dataset"
        )


def write_index(path: str | os.PathLike, dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray):
    """Write an ``.idx`` file exactly as megatron-core's ``_IndexWriter`` does (native code)."""
    from lqs_megatron import _C

    lengths = np.ascontiguousarray(sequence_lengths, dtype=np.int32)
    docs = np.ascontiguousarray(document_indices, dtype=np.int64)
    _native_call(_C.write_index, os.fspath(path), DType.code(dtype), lengths, docs)


def write_index_py(
    path: str | os.PathLike, dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray
) -> None:
    """Pure-Python :func:`write_index`: the reference the native writer is tested against."""
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


def _native_call(fn, *args):
    """Call into ``_C``, turning its errors (bad ids, I/O failures) into :class:`LQSError`."""
    try:
        return fn(*args)
    except ValueError as e:
        raise LQSError(str(e)) from None
    except RuntimeError as e:  # I/O errors: disk full, permissions
        raise LQSError(str(e)) from None


class PyBuilder:
    """Pure-Python twin of the native ``_C.IndexedBuilder_<dtype>``: the reference for equivalence tests.

    Same methods as the native class; :class:`IndexedDatasetWriter` uses it only with ``native=False``.
    """

    def __init__(self, bin_path: str, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self._f = open(bin_path, "wb")
        self._lengths: list[int] = []
        self._docs: list[int] = [0]
        self.num_tokens = 0

    def _array(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens).reshape(-1)
        if arr.size and arr.dtype != self.dtype:
            if self.dtype.kind in "iu":
                if arr.dtype.kind not in "iu":
                    raise LQSError(f"cannot store an array of dtype {arr.dtype} in a {self.dtype} dataset")
                info = np.iinfo(self.dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise LQSError(f"token ids out of range for dtype {self.dtype}: [{arr.min()}, {arr.max()}]")
            arr = arr.astype(self.dtype)
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def add_item(self, tokens) -> None:
        arr = self._array(tokens)
        self._f.write(arr.tobytes())
        self._lengths.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def add_items(self, tokens, lengths, end_documents: bool) -> None:
        arr = self._array(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != arr.size:
            raise LQSError(f"the lengths sum to {int(lengths.sum())} tokens, the array holds {arr.size}")
        self._f.write(arr.tobytes())
        self.num_tokens += int(arr.size)
        for n in lengths.tolist():
            self._lengths.append(n)
            if end_documents:
                self._docs.append(len(self._lengths))

    def end_document(self) -> None:
        self._docs.append(len(self._lengths))

    def finalize(self, idx_path: str) -> None:
        self._f.close()
        write_index_py(idx_path, self.dtype, np.asarray(self._lengths), np.asarray(self._docs))

    def abort(self) -> None:
        self._f.close()

    @property
    def num_sequences(self) -> int:
        return len(self._lengths)

    @property
    def num_documents(self) -> int:
        return len(self._docs) - 1


class IndexedDatasetWriter:
    """Write an indexed dataset atomically, through the native builder (``csrc/indexed_builder.cpp``).

    >>> with IndexedDatasetWriter("out/corpus", dtype=np.uint16) as w:   # doctest: +SKIP
    ...     w.add_document([5, 6, 7, 2])           # one sequence, one document
    ...     w.add_item([1, 2]); w.add_item([3, 2]); w.end_document()   # two sequences, one document
    ...     w.add_documents(np.array([4, 2, 9, 9, 2]), [2, 3])          # two documents of one sequence each

    Token arrays of any integer dtype are converted to the dataset dtype (an id that does not
    fit is an :class:`LQSError`). Nothing appears at ``PREFIX.bin/.idx`` until the ``with``
    block exits cleanly. ``native=False`` uses :class:`PyBuilder`, the pure-Python reference.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type = np.int32, native: bool = True):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        DType.code(self.dtype)  # validates
        self.native = native
        self._stack: contextlib.ExitStack | None = None
        self._tmp: str | None = None
        self._builder = None

    def __enter__(self) -> IndexedDatasetWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_prefix(self.prefix))
        try:
            if self.native:
                from lqs_megatron import _C

                cls = getattr(_C, f"IndexedBuilder_{self.dtype.name}")
                self._builder = _native_call(cls, bin_path(self._tmp))
            else:
                self._builder = PyBuilder(bin_path(self._tmp), self.dtype)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def add_item(self, tokens) -> None:
        """Append one sequence (it joins the current document)."""
        _native_call(self._builder.add_item, np.asarray(tokens))

    def add_items(self, tokens, lengths) -> None:
        """Append ``len(lengths)`` sequences cut from ``tokens``; they join the current document."""
        _native_call(self._builder.add_items, np.asarray(tokens), np.asarray(lengths, dtype=np.int64), False)

    def end_document(self) -> None:
        """Close the current document (sequences added since the last call)."""
        self._builder.end_document()

    def add_document(self, tokens, lengths: list[int] | None = None) -> None:
        """Append one document: a single sequence, or ``lengths`` sequences cut from ``tokens``."""
        if lengths is None:
            self.add_item(tokens)
        else:
            self.add_items(tokens, lengths)
        self.end_document()

    def add_documents(self, tokens, lengths) -> None:
        """Append ``len(lengths)`` documents of one sequence each, cut from ``tokens``."""
        _native_call(self._builder.add_items, np.asarray(tokens), np.asarray(lengths, dtype=np.int64), True)

    @property
    def num_sequences(self) -> int:
        return int(self._builder.num_sequences)

    @property
    def num_documents(self) -> int:
        """Documents closed so far."""
        return int(self._builder.num_documents)

    @property
    def num_tokens(self) -> int:
        return int(self._builder.num_tokens)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                _native_call(self._builder.finalize, idx_path(self._tmp))
            else:
                self._builder.abort()
        except BaseException:
            self._builder.abort()
            self._stack.__exit__(*sys.exc_info())
            raise
        self._stack.__exit__(exc_type, exc, tb)
        return False
