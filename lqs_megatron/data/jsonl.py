"""Reading jsonl corpora (plain, ``.gz``, ``.zst``) with ``file:line`` errors.

The one reader every jsonl input of the project goes through (``tokenize``,
``train-tokenizer``, ``tokenize-target``, curation inputs)::

    for path, line_no, obj in read_jsonl(["shard-*.jsonl.zst"]):
        text = get_text(obj, "text", path, line_no)

- :func:`expand_inputs` turns paths and glob patterns into a list of files (a glob's
  matches sorted, so the order is reproducible; a pattern matching nothing is an error).
- :func:`iter_lines` streams raw lines ``(path, line_no, bytes)``; line numbers are
  1-based and count every line of the (decompressed) file. Memory stays flat.
- :func:`parse_line` decodes one line: strict UTF-8 and one JSON value per line.
- :func:`get_text` extracts a field that must be a non-empty string.
- :func:`read_jsonl` combines them: ``(path, line_no, obj)`` for every non-blank line.

Every problem with a line raises :class:`BadLine` (an :class:`~lqs_megatron.errors.InputError`,
printed as ``file:line: what was expected``) with a ``kind`` from :data:`ERROR_KINDS`.
With ``on_error="skip"`` the readers skip such lines and count them in a :class:`SkipLog`
instead. Blank (whitespace-only) lines are ignored silently; a UTF-8 byte-order mark at the
start of a file is dropped.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lqs_megatron.errors import InputError, LQSError

ERROR_KINDS = (
    "undecodable",
    "invalid_json",
    "not_object",
    "missing_field",
    "not_string",
    "not_list",
    "empty",
    "template",
)
"""Why a line can be rejected: bytes that are not UTF-8, a line that is not JSON, JSON that is
not an object, an object without the field, a field (or list item) that should be a string,
a field that should be a list, an empty text or list, a conversation the chat template rejects."""

ON_ERROR = ("fail", "skip")

_GLOB_CHARS = frozenset("*?[")
_UTF8_BOM = b"\xef\xbb\xbf"


class BadLine(InputError):
    """One rejected input line; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str, path: str | None = None, line: int | None = None):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        super().__init__(message, path=path, line=line)

    def __reduce__(self):  # picklable across worker processes
        return (BadLine, (self.kind, self.reason, self.path, self.line))


@dataclass
class SkipLog:
    """Lines skipped under ``on_error="skip"``: a count per kind and the first few messages."""

    counts: dict[str, int] = field(default_factory=dict)
    """Skipped lines per error kind."""
    examples: list[str] = field(default_factory=list)
    """The first ``max_examples`` messages (``file:line: reason``)."""
    max_examples: int = 20
    """How many messages to keep."""

    def add(self, err: BadLine) -> None:
        self.counts[err.kind] = self.counts.get(err.kind, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": list(self.examples)}


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise LQSError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Paths and glob patterns -> the list of files, in the given order (each glob sorted)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if _GLOB_CHARS.intersection(item) and not os.path.exists(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise LQSError(f"--input {item!r} matches no file")
            files.extend(matches)
        elif os.path.isdir(item):
            raise LQSError(f"--input {item!r} is a directory (give files or a glob such as {item}/*.jsonl)")
        elif not os.path.isfile(item):
            raise LQSError(f"--input {item!r} does not exist")
        else:
            files.append(item)
    if not files:
        raise LQSError("no input files given")
    return files


def open_binary(path: str) -> io.BufferedIOBase:
    """Open ``path`` for reading bytes, decompressing ``.gz`` and ``.zst`` (by extension)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith((".zst", ".zstd")):
        import zstandard  # noqa: PLC0415

        raw = open(path, "rb")  # noqa: SIM115 - closed with the stream below
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, closefd=True)
        return io.BufferedReader(stream, buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [EOFError, zlib.error, gzip.BadGzipFile]
    try:
        import zstandard  # noqa: PLC0415

        errs.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def iter_lines(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, bytes]]:
    """Stream ``(path, line_no, raw_line)`` over all input files (line numbers 1-based).

    A corrupt or truncated compressed file raises :class:`InputError` naming the file and
    the line where reading stopped.
    """
    corrupt = _corrupt_errors()
    for path in expand_inputs(inputs):
        line_no = 0
        try:
            with open_binary(path) as f:
                for line_no, raw in enumerate(f, start=1):  # noqa: B007 - used after the loop on errors
                    if line_no == 1 and raw.startswith(_UTF8_BOM):
                        raw = raw[len(_UTF8_BOM) :]
                    yield path, line_no, raw
        except corrupt as e:
            msg = f"cannot read the compressed stream ({type(e).__name__}: {e})"
            raise InputError(msg, path, line_no + 1) from None
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror or e}", path, line_no + 1) from None


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def parse_line(raw: bytes, path: str | None = None, line_no: int | None = None) -> Any:
    """One jsonl line -> its JSON value; :class:`BadLine` for bytes that are not UTF-8 JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine(
            "undecodable", f"invalid UTF-8 byte at offset {e.start} (expected UTF-8 encoded JSON)", path, line_no
        ) from None
    try:
        return json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        msg = f"invalid JSON at column {e.colno}: {e.msg} (expected one JSON object per line)"
        raise BadLine("invalid_json", msg, path, line_no) from None


def get_field(obj: Any, name: str, path: str | None = None, line_no: int | None = None) -> Any:
    """``obj[name]`` where ``obj`` must be a JSON object holding ``name``; else :class:`BadLine`."""
    if not isinstance(obj, dict):
        raise BadLine("not_object", f"expected a JSON object with a {name!r} field, got {_kind(obj)}", path, line_no)
    if name not in obj:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise BadLine("missing_field", f"missing field {name!r} (keys: {keys})", path, line_no)
    return obj[name]


def get_text(obj: Any, name: str, path: str | None = None, line_no: int | None = None) -> str:
    """The string field ``name`` of ``obj``; it must hold a non-whitespace character.

    Raises :class:`BadLine` (``not_object``, ``missing_field``, ``not_string`` or ``empty``).
    """
    value = get_field(obj, name, path, line_no)
    if not isinstance(value, str):
        raise BadLine("not_string", f"field {name!r} must be a string, got {_kind(value)}", path, line_no)
    if not value or value.isspace():
        raise BadLine("empty", f"field {name!r} is an empty document (expected text)", path, line_no)
    return value


def read_jsonl(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    on_error: str = "fail",
    skipped: SkipLog | None = None,
) -> Iterator[tuple[str, int, Any]]:
    """Stream ``(path, line_no, obj)`` for every non-blank line of the inputs.

    ``on_error="fail"`` raises the first :class:`BadLine`; ``"skip"`` counts it in ``skipped``
    (when given) and goes on.
    """
    check_on_error(on_error)
    for path, line_no, raw in iter_lines(inputs):
        if is_blank(raw):
            continue
        try:
            yield path, line_no, parse_line(raw, path, line_no)
        except BadLine as e:
            if on_error == "fail":
                raise
            if skipped is not None:
                skipped.add(e)


def read_texts(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    field: str,
    on_error: str = "fail",
    skipped: SkipLog | None = None,
) -> Iterator[tuple[str, int, str]]:
    """Stream ``(path, line_no, text)``: :func:`read_jsonl` plus :func:`get_text` on ``field``."""
    for path, line_no, obj in read_jsonl(inputs, on_error, skipped):
        try:
            yield path, line_no, get_text(obj, field, path, line_no)
        except BadLine as e:
            if on_error == "fail":
                raise
            if skipped is not None:
                skipped.add(e)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)
