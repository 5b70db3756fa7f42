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

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lqs_megatron.data.preprocess.sources import (
    Columns,
    Segment,
    end,
    expand_inputs,
    iter_file_lines,
    iter_segment,
    sniff,
)
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


def iter_lines(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, bytes]]:
    """Stream ``(path, line_no, raw_line)`` over all input files (line numbers 1-based).

    Files are identified by content (:func:`~lqs_megatron.data.preprocess.sources.sniff`): jsonl, plain or
    gzip/zstd/xz/bz2-compressed; a parquet or arrow file here is an error (the commands that
    take those read them through :mod:`lqs_megatron.data.preprocess.sources`). A corrupt or truncated
    compressed file raises :class:`InputError` naming the file and the line where reading stopped.
    """
    for path in expand_inputs(inputs):
        src = sniff(path)
        if src.kind != "jsonl":
            raise InputError(f"is a {src.kind.replace('_', ' ')} file; this command reads jsonl only", path)
        for line_no, raw in iter_file_lines(src):
            yield path, line_no, raw


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
        columns = getattr(obj, "columns", None)  # a parquet/arrow row: name the file's columns
        keys = ", ".join(map(repr, list(obj if columns is None else columns)[:8])) or "none"
        raise BadLine(
            "missing_field",
            f"missing field {name!r} ({'keys' if columns is None else 'columns'}: {keys})",
            path,
            line_no,
        )
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


def iter_records(
    path: str, nums: list[int], rows, on_error: str, skip: Callable[[BadLine], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """``(number, record)`` for one batch of :func:`~lqs_megatron.data.preprocess.sources.iter_segment`: raw jsonl lines
    are decoded (blank ones ignored), parquet/arrow rows become dicts of their columns.

    A bad line raises :class:`BadLine` (``on_error="fail"``) or goes to ``skip`` (``"skip"``).
    """
    if isinstance(rows, Columns):
        for j, n in enumerate(nums):
            yield n, rows.record(j)
        return
    for n, raw in zip(nums, rows):
        if is_blank(raw):
            continue
        try:
            yield n, parse_line(raw, path, n)
        except BadLine as e:
            if on_error == "fail":
                raise
            if skip is not None:
                skip(e)


def read_records(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    columns: list[str],
    on_error: str = "fail",
    skipped: SkipLog | None = None,
) -> Iterator[tuple[str, int, Any]]:
    """Stream ``(path, number, record)`` from inputs of any format (:mod:`~lqs_megatron.data.preprocess.sources`).

    jsonl lines are decoded whole; parquet/arrow rows hold only ``columns`` (those the file has).
    """
    check_on_error(on_error)
    skip = None if skipped is None else skipped.add
    for path in expand_inputs(inputs):
        src = sniff(path)
        for p, nums, rows in iter_segment(src, Segment(0, 0, end(src)), columns, 1024, 1 << 22):
            for n, obj in iter_records(p, nums, rows, on_error, skip):
                yield p, n, obj


def read_texts(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    field: str,
    on_error: str = "fail",
    skipped: SkipLog | None = None,
) -> Iterator[tuple[str, int, str]]:
    """Stream ``(path, number, text)``: :func:`read_records` plus :func:`get_text` on ``field``, any format."""
    for path, line_no, obj in read_records(inputs, [field], on_error, skipped):
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
