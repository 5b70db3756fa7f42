"""Writing what the encoding workers return: the dataset, its sidecars and ``PREFIX.stats.json``.

The one write path of ``tokenize``, ``tokenize-target``, ``retokenize`` and of the merge of
their shards. :func:`write_batches` runs the workers (:func:`~lqs_megatron.data.preprocess.pool.ordered_map`)
and writes their batches in input order through the native builder, with the sidecars
streamed beside it (:class:`StreamFile`: the provenance ``PREFIX.meta.jsonl``; chunk mode's
shard boundaries). Kill-safe order at the end: the old ``PREFIX.idx`` goes first, then the
sidecars are renamed into place, then ``.bin`` and ``.idx``; ``PREFIX.stats.json`` comes
last (:func:`finish_stats`), so a shard with a stats file is a finished shard.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter, idx_path
from lqs_megatron.data.datasets.meta import meta_path
from lqs_megatron.data.preprocess.jsonl import BadLine, SkipLog
from lqs_megatron.data.preprocess.pool import ordered_map
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file, save_json
from lqs_megatron.utils.progress import Progress

logger = logging.getLogger(__name__)

TIMING_KEYS = ("seconds", "docs_per_s", "tokens_per_s")
"""Stats that measure a run rather than describe its output (they differ between any two runs)."""


class StreamFile:
    """A file written as a stream and renamed into place on a clean exit (:func:`atomic_file`); a no-op when
    disabled."""

    def __init__(self, path: str, enabled: bool = True):
        self.path, self.enabled, self.lines = path, enabled, 0
        self._stack = contextlib.ExitStack()
        self._f = None

    def __enter__(self) -> StreamFile:
        if self.enabled:
            tmp = self._stack.enter_context(atomic_file(self.path))
            self._f = self._stack.enter_context(open(tmp, "wb", buffering=1 << 20))
        return self

    def write(self, data: bytes | list[bytes] | None) -> None:
        if self._f is None or not data:
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._f.write(data)
        else:
            self._f.writelines(data)
            self.lines += len(data)

    def __exit__(self, exc_type, exc, tb) -> bool:
        return bool(self._stack.__exit__(exc_type, exc, tb))


def drop_stale(prefix: str, keep_meta: bool) -> None:
    """Before a finished dataset's sidecars move in: remove the old ``PREFIX.idx`` (so the old pair can never
    look complete beside new sidecars) and, when this run writes none, an old ``PREFIX.meta.jsonl``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(idx_path(prefix))
    if not keep_meta:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(meta_path(prefix))


def write_batches(
    work,
    batches: Iterable,
    workers: int,
    out_prefix: str,
    dtype: np.dtype,
    desc: str,
    write=None,
    finish=None,
    progress: bool = True,
    meta: bool = False,
    extra_files: tuple[StreamFile, ...] = (),
    relocate: Callable[[BadLine], BadLine] | None = None,
    allow_empty: bool = False,
) -> tuple[dict, SkipLog]:
    """Run ``work`` over ``batches`` in ``workers`` processes (threads when ``work.threads`` says they can run
    it) and write the ``EncodedBatch`` results.

    ``write(writer, out)`` stores one batch (default: one document per sequence);
    ``finish(writer)`` runs before the dataset is closed. With ``meta``, both return the
    sidecar lines of the sequences they added (the default ``write`` returns ``out.meta``),
    written to ``PREFIX.meta.jsonl``; without it, an old sidecar at ``out_prefix`` is removed.
    ``extra_files`` (written by the hooks) are committed with the sidecar. ``relocate`` fixes
    the line numbers of bad lines (a shard's segment inside a file). Returns the counts and
    the skip log. An empty result is an error (no dataset is left behind) unless ``allow_empty``
    (a shard: the merge checks the whole).
    """
    skipped = SkipLog()
    counts = {"documents": 0, "truncated_documents": 0, "truncated_tokens": 0, "chars": 0}
    bar = Progress(desc, enabled=progress)
    try:
        with IndexedDatasetWriter(out_prefix, dtype) as writer, contextlib.ExitStack() as files:
            sidecar = files.enter_context(StreamFile(meta_path(out_prefix), meta))
            for f in extra_files:
                files.enter_context(f)
            try:
                for out in ordered_map(work, batches, workers, threads=getattr(work, "threads", False)):
                    for e in out.skipped:
                        skipped.add(relocate(e) if relocate else e)
                    per_doc = out.sequences_per_document
                    counts["documents"] += len(out.lengths) if per_doc is None else len(per_doc)
                    counts["truncated_documents"] += out.truncated
                    counts["truncated_tokens"] += out.truncated_tokens
                    counts["chars"] += out.chars
                    if write is None:
                        writer.add_documents(out.tokens, out.lengths)
                        sidecar.write(out.meta)
                    else:
                        sidecar.write(write(writer, out))
                    bar.update(len(out.lengths) if per_doc is None else len(per_doc), int(out.tokens.size))
            except BadLine as e:
                if relocate is None:
                    raise
                raise relocate(e) from None
            if finish is not None:
                sidecar.write(finish(writer))
            if not allow_empty:
                check_not_empty(counts["documents"], skipped)
            if meta and sidecar.lines != writer.num_sequences:  # a bug, never the user's input
                raise RuntimeError(f"{sidecar.lines} sidecar lines for {writer.num_sequences} sequences")
            drop_stale(out_prefix, meta)
    finally:
        bar.close()
    counts.update(sequences=writer.num_sequences, tokens=writer.num_tokens, seconds=bar.elapsed)
    return counts, skipped


class ChunkProvenance:
    """Chunk mode's sidecar lines: each chunk carries the fields of the document its first token belongs to."""

    def __init__(self):
        self._docs: collections.deque[tuple[int, bytes]] = collections.deque()  # (stream end, line)
        self._doc_end = self._chunk_start = 0

    def add_documents(self, lengths: np.ndarray, lines: list[bytes] | None) -> None:
        for n, line in zip(np.asarray(lengths).tolist(), lines or ()):
            self._doc_end += n
            self._docs.append((self._doc_end, line))

    def chunks(self, lengths: np.ndarray) -> list[bytes]:
        out = []
        for n in np.asarray(lengths).tolist():
            while self._docs[0][0] <= self._chunk_start:
                self._docs.popleft()
            out.append(self._docs[0][1])
            self._chunk_start += n
        return out


def chunk_hooks(chunker, meta: bool):
    """:func:`write_batches`' ``(write, finish)`` for chunk mode; with ``meta`` they return the chunks'
    sidecar lines (:class:`ChunkProvenance`)."""
    provenance = ChunkProvenance() if meta else None

    def write(writer, out) -> list[bytes] | None:
        tokens, lengths = chunker.feed(out.tokens, out.flags)
        writer.add_documents(tokens, lengths)
        if provenance is None:
            return None
        provenance.add_documents(out.lengths, out.meta)
        return provenance.chunks(lengths)

    def finish(writer) -> list[bytes] | None:
        tokens, lengths = chunker.finish()
        writer.add_documents(tokens, lengths)
        return None if provenance is None else provenance.chunks(lengths)

    return write, finish


class BitStream:
    """uint8 0/1 flags streamed to a :class:`StreamFile` as packed bits (``numpy.packbits``, big-endian)."""

    def __init__(self, file: StreamFile):
        self.file = file
        self._rest = np.zeros(0, dtype=np.uint8)

    def write(self, flags: np.ndarray) -> None:
        bits = np.concatenate([self._rest, flags.astype(np.uint8, copy=False)])
        whole = len(bits) // 8 * 8
        self.file.write(np.packbits(bits[:whole]).tobytes())
        self._rest = bits[whole:]

    def close(self) -> None:
        if len(self._rest):
            self.file.write(np.packbits(self._rest).tobytes())
            self._rest = self._rest[:0]


#: ``file_digest(sampled=True)`` reads this many blocks of this many bytes, spread evenly over the file
_SAMPLE_BLOCKS, _SAMPLE_BYTES = 64, 1 << 20


def file_digest(path: str | os.PathLike, *, sampled: bool = False) -> str:
    """SHA-256 (first 16 hex) of a file: what ties a record to the file it describes (``PREFIX.stats.json`` to its
    ``.idx``, ``lqs score``'s parts to the dataset and the scorer). ``sampled``: of the file's size and 64 blocks
    of 1 MiB spread evenly from its first byte to its last (the whole file when it is no larger), for a file too
    large to read on every run (a corpus ``.bin``); a change that falls between the blocks goes unseen."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not sampled or size <= _SAMPLE_BLOCKS * _SAMPLE_BYTES:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
        h = hashlib.sha256(f"{size}:".encode())
        for i in range(_SAMPLE_BLOCKS):
            f.seek(i * (size - _SAMPLE_BYTES) // (_SAMPLE_BLOCKS - 1))
            h.update(f.read(_SAMPLE_BYTES))
        return h.hexdigest()[:16]


def finish_stats(command: str, out_prefix: str, counts: dict, skipped: SkipLog, extra: dict) -> dict:
    """The ``PREFIX.stats.json`` content (written atomically beside the dataset, last) and one log line."""
    seconds = max(counts.pop("seconds"), 1e-9)
    stats = {
        "command": command,
        "output": out_prefix,
        "documents": counts["documents"],
        "sequences": counts["sequences"],
        "tokens": counts["tokens"],
        "chars": counts["chars"],
        "skipped": skipped.to_dict(),
        "truncated_documents": counts["truncated_documents"],
        "truncated_tokens": counts["truncated_tokens"],
        "seconds": round(seconds, 3),
        "docs_per_s": round(counts["documents"] / seconds, 1),
        "tokens_per_s": round(counts["tokens"] / seconds, 1),
        **extra,
        "idx_digest": file_digest(idx_path(out_prefix)),
    }
    save_json(f"{out_prefix}.stats.json", stats)
    logger.info(
        "%s: %d documents -> %d sequences, %d tokens in %.1fs (%.0f docs/s, %.0f tokens/s); skipped %d lines",
        command,
        stats["documents"],
        stats["sequences"],
        stats["tokens"],
        seconds,
        stats["docs_per_s"],
        stats["tokens_per_s"],
        skipped.total,
    )
    return stats


def check_not_empty(documents: int, skipped: SkipLog) -> None:
    if documents:
        return
    if skipped.total:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.counts.items()))
        raise LQSError(f"every input line was skipped ({reasons}); first: {skipped.examples[0]}")
    raise LQSError("the input holds no document (only blank lines)")
