"""Corpus files of every container the commands read: jsonl, parquet, arrow, ``datasets.save_to_disk``.

One place identifies, opens, splits and streams the inputs of ``tokenize``,
``tokenize-target`` and ``train-tokenizer``:

- :func:`expand_inputs`: files, glob patterns and directories -> the list of files, in
  order (each glob's matches sorted; a directory's files sorted, recursively, hidden
  files and the metadata files of Spark/``datasets`` skipped; a ``save_to_disk``
  directory -> its arrow files in ``state.json`` order).
- :func:`sniff`: the format **by content** (magic bytes), never by extension alone:
  parquet (``PAR1``), arrow IPC file (``ARROW1``) or stream (``0xFFFFFFFF``), jsonl
  (plain, or gzip/zstd/xz/bz2 whatever the name). Anything else is an error
  ``FILE: not jsonl, parquet or arrow (starts with bytes ...)``. A container that is cut
  short (no parquet footer, no arrow end marker) is an error here already.
- :func:`open_binary`: a jsonl file's decompressed bytes. Every decoder checks that the
  stream ended where its container says (zstd: every frame complete; gzip, xz, bz2: their
  end-of-stream markers): a truncated file is an error naming the file, never a silent
  short read.
- :func:`iter_segment`: ``(path, numbers, rows)`` batches of one file's *segment* (a byte
  range of a plain jsonl file cut at line starts; a row range of a parquet/arrow file; a
  whole compressed file). ``rows`` is a list of raw lines (jsonl) or a :class:`Columns`
  (parquet/arrow: the wanted columns as Python lists). Numbers are 1-based lines (jsonl)
  or rows (parquet/arrow) of the file; for a jsonl segment that starts inside the file
  they count from the segment's start (:func:`line_base` turns them into file lines,
  reading the file up to the segment only when a message needs it).

Parquet is read a row group at a time (record batches of it), arrow files a record batch
at a time from a memory map, so memory stays flat on multi-GB files. pyarrow is needed for
parquet and arrow only (a clear error without it).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lqs_megatron.errors import InputError, LQSError

_GLOB_CHARS = frozenset("*?[")
UTF8_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 1 << 16

MAGIC = {
    "gzip": (b"\x1f\x8b",),
    "zstd": (b"\x28\xb5\x2f\xfd",) + tuple(bytes([0x50 + k, 0x2A, 0x4D, 0x18]) for k in range(16)),
    "xz": (b"\xfd7zXZ\x00",),
    "bz2": (b"BZh",),
}
"""Compressions of jsonl files, by their leading bytes (zstd: a frame or a skippable frame)."""

ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
PARQUET_MAGIC = b"PAR1"
SKIPPED_NAMES = frozenset({"state.json", "dataset_info.json", "dataset_dict.json", "_SUCCESS", "_common_metadata"})
"""Files a directory may hold beside the data (``datasets``, Spark) that :func:`expand_inputs` leaves out."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise LQSError("reading parquet or arrow files needs pyarrow: pip install pyarrow") from None
    return pyarrow


# --------------------------------------------------------------------------- inputs


def _dir_files(path: str) -> list[str]:
    """A directory's data files: a ``save_to_disk`` dataset's arrow files, or every file below it, sorted."""
    state = os.path.join(path, "state.json")
    if os.path.isfile(state):
        try:
            files = [d["filename"] for d in json.load(open(state))["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise LQSError(f"{state}: not a datasets.save_to_disk state file ({e})") from None
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        splits = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "state.json")))
        raise LQSError(
            f"--input {path!r} is a datasets DatasetDict (splits: {', '.join(splits)}); give one split's directory, "
            f"e.g. {os.path.join(path, splits[0] if splits else 'train')}"
        )
    out = []
    for name in sorted(os.listdir(path)):
        if name.startswith(".") or name in SKIPPED_NAMES or name.endswith((".crc", ".lock")):
            continue
        full = os.path.join(path, name)
        out.extend(_dir_files(full) if os.path.isdir(full) else [full])
    return out


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Paths, glob patterns and directories -> the list of files, in the given order (see the module docstring)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if _GLOB_CHARS.intersection(item) and not os.path.exists(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise LQSError(f"--input {item!r} matches no file")
            for m in matches:
                files.extend(_dir_files(m) if os.path.isdir(m) else [m] if os.path.isfile(m) else [])
        elif os.path.isdir(item):
            found = _dir_files(item)
            if not found:
                raise LQSError(f"--input {item!r} is a directory without data files")
            files.extend(found)
        elif not os.path.isfile(item):
            raise LQSError(f"--input {item!r} does not exist")
        else:
            files.append(item)
    if not files:
        raise LQSError("no input files given")
    return files


# --------------------------------------------------------------------------- formats


@dataclass
class Source:
    """One input file: its format and size; for parquet/arrow its row count (read on demand)."""

    path: str
    kind: str
    """``jsonl``, ``parquet``, ``arrow`` (IPC file) or ``arrow_stream`` (IPC stream, ``save_to_disk``)."""
    compression: str | None = None
    """jsonl only: ``gzip``, ``zstd``, ``xz``, ``bz2`` or ``None``."""
    size: int = 0
    _rows: int | None = field(default=None, repr=False)

    @property
    def columnar(self) -> bool:
        return self.kind != "jsonl"

    @property
    def splittable_bytes(self) -> bool:
        """A plain jsonl file: split by byte ranges at line starts."""
        return self.kind == "jsonl" and self.compression is None

    @property
    def rows(self) -> int:
        if self._rows is None:
            self._rows = _count_rows(self)
        return self._rows


def _hex(head: bytes) -> str:
    shown = head[:16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in shown)
    return f"{shown.hex(' ')}{' ...' if len(head) > 16 else ''} = {text!r}"


def _not_supported(path: str, head: bytes, where: str = "") -> InputError:
    return InputError(f"not jsonl, parquet or arrow ({where}starts with bytes {_hex(head)})", path)


def _looks_like_jsonl(head: bytes) -> bool:
    body = head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head
    stripped = body.lstrip()
    return not stripped or stripped[:1] in (b"{", b"[")


def sniff(path: str) -> Source:
    """Identify ``path`` by its bytes; :class:`InputError` for another format or a container cut short."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            f.seek(max(size - 8, 0))
            tail = f.read(8)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    if head.startswith(PARQUET_MAGIC):
        if size < 12 or not tail.endswith(PARQUET_MAGIC):
            raise InputError(
                f"truncated parquet file: no footer at its end ({size} bytes; the file is cut short)", path
            )
        return Source(path, "parquet", size=size)
    if head.startswith(ARROW_FILE_MAGIC):
        if not tail.endswith(ARROW_FILE_MAGIC):
            raise InputError(f"truncated arrow file: no footer at its end ({size} bytes; the file is cut short)", path)
        return Source(path, "arrow", size=size)
    if head.startswith(ARROW_STREAM_MAGIC):
        if not tail.endswith(b"\x00\x00\x00\x00"):
            raise InputError(
                f"truncated arrow stream: no end-of-stream marker at byte {size} (the file is cut short)", path
            )
        return Source(path, "arrow_stream", size=size)
    for name, magics in MAGIC.items():
        if head.startswith(magics):
            inner = _peek_decompressed(path, name)
            if not _looks_like_jsonl(inner):
                raise _not_supported(path, inner, f"{name}-compressed; the decompressed data ")
            return Source(path, "jsonl", name, size)
    if not _looks_like_jsonl(head):
        raise _not_supported(path, head)
    return Source(path, "jsonl", None, size)


def _peek_decompressed(path: str, compression: str) -> bytes:
    try:
        with open_binary(path, compression) as f:
            return f.read(_SNIFF_BYTES)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError):
        return b""  # a short or corrupt stream: reported with its line when read


# --------------------------------------------------------------------------- jsonl


class _ZstdFrames(io.RawIOBase):
    """A zstd file's decompressed bytes, frame after frame; an incomplete last frame is an :class:`EOFError`."""

    _CHUNK = 1 << 17  # compressed bytes per step: the output of one step stays small

    def __init__(self, path: str):
        import zstandard

        self._dctx = zstandard.ZstdDecompressor()
        self._raw = open(path, "rb")
        self._obj = self._dctx.decompressobj()
        self._pending = b""
        self._frame_start = 0  # compressed offset of the current frame
        self._fed = 0  # compressed bytes fed to the current frame
        self._pos = 0  # compressed bytes consumed in all

    def readable(self) -> bool:
        return True

    def _step(self) -> bool:
        chunk = self._raw.read(self._CHUNK)
        if not chunk:
            if self._fed:
                raise EOFError(
                    f"the zstd frame starting at byte {self._frame_start} is incomplete: the file ends at byte "
                    f"{self._pos} (cut short?)"
                )
            return False
        out = []
        while chunk:
            before = len(chunk)
            out.append(self._obj.decompress(chunk))
            self._pos += before
            if self._obj.eof:
                chunk = self._obj.unused_data
                self._pos -= len(chunk)
                self._obj = self._dctx.decompressobj()
                self._frame_start, self._fed = self._pos, 0
            else:
                self._fed += before
                chunk = b""
        self._pending = b"".join(out)
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            if not self._step():
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str, compression: str | None = None) -> io.BufferedIOBase:
    """Open a jsonl file for reading bytes, decompressed (``compression`` as :func:`sniff` found it)."""
    if compression is None and os.path.getsize(path):
        compression = sniff(path).compression
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 20)
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


CORRUPT_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard

        return (*CORRUPT_ERRORS, zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        return CORRUPT_ERRORS


def _read_at(fd: int, pos: int, n: int) -> bytes:
    return os.pread(fd, n, pos)


def _find_newline(fd: int, pos: int, size: int) -> int | None:
    """The offset of the first ``\\n`` at or after ``pos``."""
    while pos < size:
        buf = _read_at(fd, pos, 1 << 16)
        k = buf.find(b"\n")
        if k >= 0:
            return pos + k
        pos += len(buf)
    return None


def _rfind_newline(fd: int, end: int) -> int | None:
    """The offset of the last ``\\n`` before ``end``."""
    while end > 0:
        start = max(0, end - (1 << 16))
        k = _read_at(fd, start, end - start).rfind(b"\n")
        if k >= 0:
            return start + k
        end = start
    return None


def iter_lines_range(path: str, lo: int, hi: int) -> Iterator[tuple[int, bytes]]:
    """``(number, raw line)`` for the lines of a plain file that start in ``[lo, hi)`` (``lo`` a line start).

    Numbers are 1-based from ``lo``. A UTF-8 byte-order mark at the start of the file is dropped.
    """
    n = 0
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            f.seek(lo)
            pos = lo
            for n, raw in enumerate(f, start=1):
                if pos >= hi:
                    return
                pos += len(raw)
                if pos == len(raw) and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                yield n, raw
    except OSError as e:
        raise InputError(f"cannot read after byte {lo}: {e.strerror or e}", path) from None


def iter_file_lines(src: Source) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` over a whole jsonl file, decompressed; a broken container is an InputError."""
    if src.compression is None:
        yield from iter_lines_range(src.path, 0, src.size)
        return
    line_no = 0
    corrupt = _corrupt_errors()
    try:
        with open_binary(src.path, src.compression) as f:
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                yield line_no, raw
    except corrupt as e:
        msg = f"cannot read the {src.compression} stream after line {line_no}: {e} (a truncated or corrupt file)"
        raise InputError(msg, src.path, line_no + 1) from None
    except OSError as e:  # bz2 reports corrupt data as OSError
        msg = f"cannot read the {src.compression} stream: {e.strerror or e}"
        raise InputError(msg, src.path, line_no + 1) from None


def line_base(path: str, lo: int) -> int:
    """The number of lines before byte ``lo`` of a plain file (what segment-relative line numbers are offset by)."""
    n = 0
    with open(path, "rb") as f:
        left = lo
        while left > 0:
            buf = f.read(min(left, 1 << 22))
            if not buf:
                break
            n += buf.count(b"\n")
            left -= len(buf)
    return n


# --------------------------------------------------------------------------- parquet / arrow


@dataclass
class Columns:
    """A batch of parquet/arrow rows: the wanted columns that exist, as Python lists."""

    data: dict[str, list]
    names: list[str]
    """Every column of the file (for messages)."""
    n: int
    """Rows in the batch."""

    def __len__(self) -> int:
        return self.n

    def record(self, j: int) -> Row:
        """Row ``j`` as a record holding the wanted columns the file has."""
        return Row({k: v[j] for k, v in self.data.items()}, self.names)


class Row(dict):
    """A parquet/arrow row as a record; ``columns`` are all the file's columns (for messages)."""

    __slots__ = ("columns",)

    def __init__(self, values: dict[str, Any], columns: list[str]):
        super().__init__(values)
        self.columns = columns


def _count_rows(src: Source) -> int:
    pa = _pyarrow()
    try:
        if src.kind == "parquet":
            return pa.parquet.ParquetFile(src.path).metadata.num_rows
        with pa.memory_map(src.path) as m:
            if src.kind == "arrow":
                r = pa.ipc.open_file(m)
                return sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
            return sum(b.num_rows for b in pa.ipc.open_stream(m))
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read the {src.kind} metadata: {e}", src.path) from None


def _schema_names(src: Source) -> list[str]:
    pa = _pyarrow()
    if src.kind == "parquet":
        return list(pa.parquet.ParquetFile(src.path).schema_arrow.names)
    with pa.memory_map(src.path) as m:
        return list((pa.ipc.open_file(m) if src.kind == "arrow" else pa.ipc.open_stream(m)).schema.names)


def _record_batches(src: Source, columns: list[str], lo: int, hi: int, batch_rows: int):
    """``(first row, pyarrow.RecordBatch)`` covering rows ``[lo, hi)`` of a parquet/arrow file."""
    pa = _pyarrow()
    if src.kind == "parquet":
        pf = pa.parquet.ParquetFile(src.path)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if start + n > lo and start < hi:
                row = start
                for b in pf.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns, use_threads=False):
                    yield row, b
                    row += b.num_rows
            start += n
            if start >= hi:
                return
        return
    with pa.memory_map(src.path) as m:
        if src.kind == "arrow":
            r = pa.ipc.open_file(m)
            batches = (r.get_batch(i) for i in range(r.num_record_batches))
        else:
            batches = iter(pa.ipc.open_stream(m))
        row = 0
        for b in batches:
            if row + b.num_rows > lo:
                yield row, b.select(columns)
            row += b.num_rows
            if row >= hi:
                return


def iter_columnar(
    src: Source, columns: list[str], lo: int, hi: int, batch_rows: int
) -> Iterator[tuple[list[int], Columns]]:
    """``(row numbers, Columns)`` for rows ``[lo, hi)`` of a parquet/arrow file (numbers 1-based)."""
    pa = _pyarrow()
    try:
        names = _schema_names(src)
        present = [c for c in columns if c in names]
        for first, batch in _record_batches(src, present, lo, hi, batch_rows):
            a, b = max(lo - first, 0), min(hi - first, batch.num_rows)
            if a >= b:
                continue
            part = batch.slice(a, b - a)
            data = {c: part.column(c).to_pylist() for c in present}
            yield list(range(first + a + 1, first + b + 1)), Columns(data, names, b - a)
    except (pa.ArrowException, OSError) as e:
        msg = f"cannot read the {src.kind} file near row {lo + 1}: {e} (a corrupt file?)"
        raise InputError(msg, src.path) from None


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    """A part of one input file: bytes ``[lo, hi)`` of a plain jsonl file (cut at line starts), rows
    ``[lo, hi)`` of a parquet/arrow file, or ``(0, 1)``: a whole compressed jsonl file."""

    index: int
    """The file's position in the input list."""
    lo: int
    hi: int


def whole(sources: list[Source]) -> list[Segment]:
    """Every file, whole."""
    return [Segment(k, 0, end(s)) for k, s in enumerate(sources)]


def end(src: Source) -> int:
    """The end position of a file in its own units (bytes, rows, or 1 for an unsplittable stream)."""
    if src.columnar:
        return src.rows
    return src.size if src.compression is None else 1


def iter_segment(
    src: Source, seg: Segment, columns: list[str] | None, batch_lines: int, batch_bytes: int
) -> Iterator[tuple[str, list[int], list[bytes] | Columns]]:
    """``(path, numbers, rows)`` batches of one segment (see the module docstring); never across files."""
    if src.columnar:
        for nums, cols in iter_columnar(src, columns or [], seg.lo, seg.hi, batch_lines):
            yield src.path, nums, cols
        return
    lines = iter_file_lines(src) if src.compression else iter_lines_range(src.path, seg.lo, seg.hi)
    nums: list[int] = []
    raws: list[bytes] = []
    size = 0
    for n, raw in lines:
        if len(raws) >= batch_lines or size >= batch_bytes:
            yield src.path, nums, raws
            nums, raws, size = [], [], 0
        nums.append(n)
        raws.append(raw)
        size += len(raw)
    if raws:
        yield src.path, nums, raws
