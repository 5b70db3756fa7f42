"""``lqs tokenize``: jsonl corpora -> a Megatron indexed dataset, streaming, in worker processes.

The main process reads raw lines (:func:`lqs_megatron.data.jsonl.iter_lines`) and hands
batches of them to ``workers`` processes, which decode the JSON, check the field, encode
the whole batch at once with the fast tokenizer and return one flat token array per
batch (already in the dataset dtype). The main process writes the batches, in input
order, through the native builder (:class:`~lqs_megatron.data.indexed.IndexedDatasetWriter`).
At most ``4 * workers + 4`` batches are in flight, so memory stays flat whatever the
corpus size, and the output is the same for any number of workers.

Each document becomes ``tok(text).input_ids + [eos]`` (EOS is not appended a second time
when the tokenizer's own encoding already ends with it). ``docs/data.md`` documents the
modes, the error handling and the stats file.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from lqs_megatron.data.chunking import Chunker, SentenceBoundaries, train_sentence_splitter
from lqs_megatron.data.indexed import IndexedDatasetWriter, idx_path, optimal_dtype
from lqs_megatron.data.jsonl import (
    ON_ERROR,
    BadLine,
    SkipLog,
    expand_inputs,
    get_text,
    is_blank,
    iter_lines,
    parse_line,
    read_texts,
)
from lqs_megatron.data.meta import meta_line, meta_path
from lqs_megatron.data.parallel import ordered_map
from lqs_megatron.data.progress import Progress
from lqs_megatron.data.tokenizer import BatchEncoder, vocab_size
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file, save_json

log = logging.getLogger(__name__)

MODES = ("document", "chunk")


def default_workers() -> int:
    """One encoding process per core (at most 32)."""
    return max(1, min(os.cpu_count() or 1, 32))


@dataclass
class TokenizeConfig:
    """What ``lqs tokenize`` does; every field is one flag."""

    inputs: list[str]
    """``--input``: jsonl files (plain, ``.gz``, ``.zst``) or glob patterns, read in order."""
    field: str
    """``--field``: the JSON field holding the document text."""
    tokenizer_dir: str
    """``--tokenizer``: a local Hugging Face tokenizer directory (it must have an EOS token)."""
    out_prefix: str
    """``--out``: the output ``PREFIX`` (``PREFIX.bin``, ``PREFIX.idx``, ``PREFIX.stats.json``)."""
    mode: str = "document"
    """``--mode``: ``document`` (one sequence per document) or ``chunk`` (fixed-size chunks)."""
    max_length: int | None = None
    """``--max-length``: document mode: truncate longer documents (EOS kept); chunk mode: the chunk size."""
    workers: int | None = None
    """``--workers``: encoding processes (0: encode in the main process; ``None``: one per core)."""
    on_error: str = "fail"
    """``--on-error``: ``fail`` at the first bad line, or ``skip`` (count and report) bad lines."""
    batch_lines: int = 256
    """Lines per batch handed to a worker."""
    batch_bytes: int = 1 << 18
    """A batch is also closed once its raw lines reach this many bytes."""
    punkt_sample_chars: int = 2_000_000
    """Chunk mode: characters of corpus text the Punkt sentence splitter is trained on."""
    progress: bool = True
    """Show a progress bar (on a terminal) or periodic log lines."""
    word_cache: bool = True
    """``--no-word-cache`` turns it off: encode whole documents with the tokenizer's backend
    (same ids; the word cache is a speed-up for sentencepiece-style BPE, ``data/word_cache.py``)."""
    keep_fields: list[str] | None = None
    """``--keep-fields``: input fields written to the provenance sidecar ``PREFIX.meta.jsonl``, one line per
    sequence (:mod:`lqs_megatron.data.meta`); ``None``: no sidecar."""

    def __post_init__(self):
        if isinstance(self.inputs, (str, os.PathLike)):
            self.inputs = [self.inputs]
        self.inputs = [os.fspath(p) for p in self.inputs]
        self.tokenizer_dir, self.out_prefix = os.fspath(self.tokenizer_dir), os.fspath(self.out_prefix)
        if self.mode not in MODES:
            raise LQSError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.on_error not in ON_ERROR:
            raise LQSError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.mode == "chunk" and self.max_length is None:
            raise LQSError("--mode chunk needs --max-length (the chunk size, e.g. 1025 as in PDS/DELT)")
        if self.max_length is not None and self.max_length < 2:
            raise LQSError(f"--max-length must be at least 2, got {self.max_length}")
        if self.workers is None:
            self.workers = default_workers()
        if self.workers < 0:
            raise LQSError(f"--workers must be >= 0, got {self.workers}")
        if not self.field:
            raise LQSError("--field must name a JSON field")
        if self.batch_lines < 1 or self.batch_bytes < 1:
            raise LQSError("batch sizes must be positive")
        self.keep_fields = parse_fields(self.keep_fields)


def parse_fields(fields: str | Iterable[str] | None) -> list[str] | None:
    """``"source,url"`` (or a list of such strings) -> ``["source", "url"]``; ``None`` or empty -> ``None``."""
    if fields is None:
        return None
    items = [fields] if isinstance(fields, str) else list(fields)
    out = [f.strip() for item in items for f in item.split(",")]
    if any(not f for f in out):
        raise LQSError(f"--keep-fields takes comma-separated field names, got {','.join(items)!r}")
    if len(set(out)) != len(out):
        raise LQSError(f"--keep-fields names a field twice: {','.join(out)}")
    return out or None


@dataclass
class EncodedBatch:
    """What a worker returns for one batch of lines."""

    tokens: np.ndarray
    """All sequences of the batch, back to back, in the dataset dtype."""
    lengths: np.ndarray
    """int64 length of each sequence (one per document)."""
    flags: np.ndarray | None = None
    """Chunk mode: uint8 per token, 1 where a chunk may end after it."""
    skipped: list[BadLine] = field(default_factory=list)
    """Lines skipped under ``on_error="skip"``."""
    truncated: int = 0
    """Documents cut to ``max_length``."""
    truncated_tokens: int = 0
    """Tokens dropped by truncation."""
    chars: int = 0
    """Characters of text encoded."""
    sequences_per_document: np.ndarray | None = None
    """Set when documents hold several sequences (retokenize); else one sequence per document."""
    meta: list[bytes] | None = None
    """With ``--keep-fields``: one sidecar line per document (:func:`~lqs_megatron.data.meta.meta_line`)."""


def line_batches(
    files: Iterable[str], batch_lines: int, batch_bytes: int
) -> Iterator[tuple[str, list[int], list[bytes]]]:
    """Group raw lines into ``(path, line_numbers, raw_lines)`` batches (never across files)."""
    path = None
    nums: list[int] = []
    raws: list[bytes] = []
    size = 0
    for p, n, raw in iter_lines(files):
        if p != path or len(raws) >= batch_lines or size >= batch_bytes:
            if raws:
                yield path, nums, raws
            path, nums, raws, size = p, [], [], 0
        nums.append(n)
        raws.append(raw)
        size += len(raw)
    if raws:
        yield path, nums, raws


def flatten(ids: list[list[int]], eos: int, max_length: int | None, dtype: np.dtype) -> EncodedBatch:
    """Append EOS to each id list (unless it ends with one), truncate (EOS kept), concatenate."""
    truncated = dropped = 0
    for x in ids:
        if not x or x[-1] != eos:
            x.append(eos)
        if max_length is not None and len(x) > max_length:
            truncated += 1
            dropped += len(x) - max_length
            del x[max_length - 1 :]
            x.append(eos)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    if np.dtype(dtype).kind in "iu" and total:
        tokens = _in_dtype(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total), dtype)
    else:
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total)
    return EncodedBatch(tokens, lengths, truncated=truncated, truncated_tokens=dropped)


def _in_dtype(tokens: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``tokens`` cast to the dataset dtype; a clear error for an id it cannot hold."""
    if tokens.size and np.dtype(dtype).kind in "iu":
        lo, hi = int(tokens.min()), int(tokens.max())
        if hi > np.iinfo(dtype).max or lo < 0:
            bad = hi if hi > np.iinfo(dtype).max else lo
            raise LQSError(f"the tokenizer produced id {bad}, outside the dataset dtype {np.dtype(dtype)}")
    return tokens.astype(dtype, copy=False)


class EncodeDocuments:
    """The worker's job for ``lqs tokenize``: one batch of raw lines -> :class:`EncodedBatch`."""

    def __init__(self, config: TokenizeConfig, dtype: np.dtype, eos: int, punkt_params=None):
        self.encoder = BatchEncoder(config.tokenizer_dir, word_cache=config.word_cache)
        self.field, self.on_error, self.mode = config.field, config.on_error, config.mode
        self.max_length = config.max_length if config.mode == "document" else None
        self.dtype, self.eos, self.punkt_params = np.dtype(dtype), eos, punkt_params
        self.keep_fields = config.keep_fields
        self._sentences = None

    def texts(
        self, path: str, nums: list[int], raws: list[bytes], skipped: list[BadLine], meta: list[bytes] | None
    ) -> list[str]:
        texts = []
        for n, raw in zip(nums, raws):
            if is_blank(raw):
                continue
            try:
                obj = parse_line(raw, path, n)
                texts.append(get_text(obj, self.field, path, n))
            except BadLine as e:
                if self.on_error == "fail":
                    raise
                skipped.append(e)
                continue
            if meta is not None:
                meta.append(meta_line(obj, self.keep_fields))
        return texts

    def __call__(self, task: tuple[str, list[int], list[bytes]]) -> EncodedBatch:
        skipped: list[BadLine] = []
        meta = None if self.keep_fields is None else []
        texts = self.texts(*task, skipped, meta)
        if self.mode == "chunk":
            out = self._chunk_pieces(texts)
        else:
            flat = self.encoder.encode_flat(texts, self.eos, self.max_length)
            if flat is None:
                out = flatten(self.encoder.encode(texts), self.eos, self.max_length, self.dtype)
            else:
                tokens, lengths, truncated, dropped = flat
                out = EncodedBatch(
                    _in_dtype(tokens, self.dtype), lengths, truncated=truncated, truncated_tokens=dropped
                )
        out.skipped, out.chars, out.meta = skipped, sum(map(len, texts)), meta
        return out

    def _chunk_pieces(self, texts: list[str]) -> EncodedBatch:
        if self._sentences is None:
            self._sentences = SentenceBoundaries(self.punkt_params)
        encs = self.encoder.encode_with_offsets(texts)
        ids = [e.ids for e in encs]
        flags = [self._sentences.flags(t, e) for t, e in zip(texts, encs)]
        out = flatten(ids, self.eos, None, self.dtype)
        for f, n in zip(flags, out.lengths.tolist()):  # the appended EOS is always a boundary
            f.resize(n, refcheck=False)
            f[-1] = 1
        out.flags = np.concatenate(flags) if flags else np.zeros(0, np.uint8)
        return out


def _sample_texts(files: list[str], field: str, sample_chars: int) -> Iterator[str]:
    """Valid texts from the start of the corpus (bad lines skipped: the main pass reports them)."""
    seen = 0
    for _, _, text in read_texts(files, field, on_error="skip"):
        yield text
        seen += len(text)
        if seen >= sample_chars:
            return


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
) -> tuple[dict, SkipLog]:
    """Run ``work`` over ``batches`` in ``workers`` processes and write the :class:`EncodedBatch` results.

    ``write(writer, out)`` stores one batch (default: one document per sequence);
    ``finish(writer)`` runs before the dataset is closed. With ``meta``, both return the
    sidecar lines of the sequences they added (the default ``write`` returns ``out.meta``),
    written to ``PREFIX.meta.jsonl``; without it, an old sidecar at ``out_prefix`` is removed.
    Kill-safe order at the end: the old ``.idx`` goes first, then the sidecar is renamed
    into place, then ``.bin`` and ``.idx``. Returns the counts and the skip log.
    An empty result is an error (no dataset is left behind).
    """
    skipped = SkipLog()
    counts = {"documents": 0, "truncated_documents": 0, "truncated_tokens": 0, "chars": 0}
    bar = Progress(desc, enabled=progress)
    try:
        with IndexedDatasetWriter(out_prefix, dtype) as writer, MetaSink(out_prefix, meta) as sidecar:
            for out in ordered_map(work, batches, workers):
                for e in out.skipped:
                    skipped.add(e)
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
            if finish is not None:
                sidecar.write(finish(writer))
            _check_not_empty(counts["documents"], skipped)
            sidecar.check(writer.num_sequences)
    finally:
        bar.close()
    counts.update(sequences=writer.num_sequences, tokens=writer.num_tokens, seconds=bar.elapsed)
    return counts, skipped


class MetaSink:
    """The streamed ``PREFIX.meta.jsonl`` of :func:`write_batches` (a no-op when disabled).

    Lines go to a temporary file beside the output; on a clean exit (inside the dataset
    writer's block) the old ``PREFIX.idx`` is removed and the sidecar renamed into place, so a
    complete-looking dataset never pairs with a sidecar of another run.
    """

    def __init__(self, prefix: str, enabled: bool):
        self.prefix, self.enabled, self.lines = prefix, enabled, 0
        self._stack = contextlib.ExitStack()
        self._f = None

    def __enter__(self) -> MetaSink:
        if self.enabled:
            tmp = self._stack.enter_context(atomic_file(meta_path(self.prefix)))
            self._f = self._stack.enter_context(open(tmp, "wb", buffering=1 << 20))
        return self

    def write(self, lines: list[bytes] | None) -> None:
        if self._f is not None and lines:
            self._f.writelines(lines)
            self.lines += len(lines)

    def check(self, sequences: int) -> None:
        if self.enabled and self.lines != sequences:  # a bug, never the user's input
            raise RuntimeError(f"{self.lines} sidecar lines for {sequences} sequences")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(idx_path(self.prefix))
            if not self.enabled:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(meta_path(self.prefix))
        return bool(self._stack.__exit__(exc_type, exc, tb))


class ChunkProvenance:
    """Chunk mode's sidecar lines: each chunk carries the fields of the document its first token belongs to."""

    def __init__(self):
        self._docs: collections.deque[tuple[int, bytes]] = collections.deque()  # (stream end, line)
        self._doc_end = self._chunk_start = 0

    def add_documents(self, lengths: np.ndarray, lines: list[bytes] | None) -> None:
        for n, line in zip(lengths.tolist(), lines or ()):
            self._doc_end += n
            self._docs.append((self._doc_end, line))

    def chunks(self, lengths: np.ndarray) -> list[bytes]:
        out = []
        for n in lengths.tolist():
            while self._docs[0][0] <= self._chunk_start:
                self._docs.popleft()
            out.append(self._docs[0][1])
            self._chunk_start += n
        return out


def finish_stats(command: str, out_prefix: str, counts: dict, skipped: SkipLog, extra: dict) -> dict:
    """The ``PREFIX.stats.json`` content (written atomically beside the dataset) and one log line."""
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
    }
    save_json(f"{out_prefix}.stats.json", stats)
    log.info(
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


def tokenize(config: TokenizeConfig) -> dict:
    """Run ``lqs tokenize``; return the statistics (also written to ``PREFIX.stats.json``)."""
    t0 = time.perf_counter()
    encoder = BatchEncoder(config.tokenizer_dir, word_cache=config.word_cache)
    tok = encoder.tok  # loads it: a clear error for a missing directory or no EOS
    eos, vocab = encoder.eos_token_id, vocab_size(tok)
    dtype = optimal_dtype(vocab)
    files = expand_inputs(config.inputs)
    encoding = "word cache" if config.mode == "document" and encoder.word_cache is not None else "backend"
    punkt = chunker = None
    hooks = (None, None)
    if config.mode == "chunk":
        if encoder.backend is None:
            encoder.encode_with_offsets([])  # raises the clear error
        punkt = train_sentence_splitter(_sample_texts(files, config.field, config.punkt_sample_chars))
        chunker = Chunker(config.max_length, dtype)
        hooks = chunk_hooks(chunker, config.keep_fields is not None)
    counts, skipped = write_batches(
        EncodeDocuments(config, dtype, eos, punkt),
        line_batches(files, config.batch_lines, config.batch_bytes),
        config.workers,
        config.out_prefix,
        dtype,
        desc=f"tokenize {os.path.basename(config.out_prefix)}",
        write=hooks[0],
        finish=hooks[1],
        progress=config.progress,
        meta=config.keep_fields is not None,
    )
    counts["seconds"] = time.perf_counter() - t0  # the whole run, set-up included
    extra = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_token_id": eos,
        "encoding": encoding,
        "files": files,
        "args": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
    if chunker is not None:
        extra["chunking"] = chunker.stats()
    if config.keep_fields is not None:
        extra["meta"] = meta_path(config.out_prefix)
    return finish_stats("tokenize", config.out_prefix, counts, skipped, extra)


def chunk_hooks(chunker: Chunker, meta: bool):
    """:func:`write_batches`' ``(write, finish)`` for chunk mode; with ``meta`` they return the chunks'
    sidecar lines (:class:`ChunkProvenance`)."""
    provenance = ChunkProvenance() if meta else None

    def write(writer, out: EncodedBatch) -> list[bytes] | None:
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


def _check_not_empty(documents: int, skipped: SkipLog) -> None:
    if documents:
        return
    if skipped.total:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.counts.items()))
        raise LQSError(f"every input line was skipped ({reasons}); first: {skipped.examples[0]}")
    raise LQSError("the input holds no document (only blank lines)")


def tokenize_files(
    inputs: str | os.PathLike | list[str | os.PathLike],
    field: str,
    tokenizer_dir: str | os.PathLike,
    out_prefix: str | os.PathLike,
    mode: str = "document",
    max_length: int | None = None,
    workers: int | None = None,
    on_error: str = "fail",
    progress: bool = True,
    word_cache: bool = True,
    keep_fields: list[str] | str | None = None,
) -> dict:
    """Tokenize jsonl files into ``out_prefix.bin/.idx`` (+ ``.stats.json``); return the stats dict.

    The library form of ``lqs tokenize`` (same arguments as its flags; ``workers=None`` means
    one per core).
    """
    cfg = TokenizeConfig(
        inputs=inputs,
        field=field,
        tokenizer_dir=tokenizer_dir,
        out_prefix=out_prefix,
        mode=mode,
        max_length=max_length,
        workers=workers,
        on_error=on_error,
        progress=progress,
        word_cache=word_cache,
        keep_fields=keep_fields,
    )
    return tokenize(cfg)
