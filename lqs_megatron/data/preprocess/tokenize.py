"""``lqs tokenize``: corpora (jsonl, parquet, arrow) -> a Megatron indexed dataset, streaming, in worker processes.

The main process reads batches of raw jsonl lines, or of parquet/arrow column values
(:mod:`lqs_megatron.data.preprocess.sources`; with a shard, only its segments:
:mod:`lqs_megatron.data.preprocess.sharding`)
and hands them to ``workers`` processes, which decode the JSON, check the field, encode
the whole batch at once with the fast tokenizer and return one flat token array per
batch (already in the dataset dtype). The main process writes the batches, in input
order, through the native builder (:class:`~lqs_megatron.data.datasets.indexed.IndexedDatasetWriter`).
At most ``4 * workers + 4`` batches are in flight, so memory stays flat whatever the
corpus size, and the output is the same for any number of workers.

Each document becomes ``tok(text).input_ids + [eos]`` (EOS is not appended a second time
when the tokenizer's own encoding already ends with it). ``docs/data.md`` documents the
modes, the error handling and the stats file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from lqs_megatron import _C
from lqs_megatron.data.datasets.indexed import dataset_exists, idx_path, optimal_dtype
from lqs_megatron.data.datasets.meta import meta_line, meta_path
from lqs_megatron.data.preprocess.chunking import Chunker, SentenceBoundaries, train_sentence_splitter
from lqs_megatron.data.preprocess.jsonl import ON_ERROR, BadLine, get_text, iter_records, read_texts
from lqs_megatron.data.preprocess.sharding import Shard, parse_shard, plan_inputs, shard_output
from lqs_megatron.data.preprocess.sources import Columns
from lqs_megatron.data.preprocess.writing import (
    BitStream,
    StreamFile,
    chunk_hooks,
    file_digest,
    finish_stats,
    write_batches,
)
from lqs_megatron.data.tokenizers.fingerprint import fingerprint
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, check_round_trip, vocab_size
from lqs_megatron.errors import LQSError
from lqs_megatron.options import internal, option
from lqs_megatron.utils.lock import output_lock

logger = logging.getLogger(__name__)

MODES = ("document", "chunk")


def default_workers() -> int:
    """One encoding process per core (at most 32)."""
    return max(1, min(os.cpu_count() or 1, 32))


@dataclass
class TokenizeConfig:
    """What ``lqs tokenize`` does; every field is one flag."""

    inputs: list[str] = option(flag="--input", metavar="FILE")
    """``--input``: files, directories or glob patterns (quote them), read in the order given: jsonl (plain,
    .gz, .zst, .xz, .bz2), parquet, arrow IPC files/streams and datasets.save_to_disk directories, recognised by
    their content."""
    field: str = option(flag_default="text")
    """``--field``: the JSON field (parquet/arrow: the column) holding the document text."""
    tokenizer_dir: str = option(flag="--tokenizer", metavar="TOKENIZER_DIR")
    """``--tokenizer``: a local Hugging Face tokenizer directory (it must have an EOS token)."""
    out_prefix: str = option(flag="--out", metavar="PREFIX")
    """``--out``: the output ``PREFIX`` (``PREFIX.bin``, ``PREFIX.idx``, ``PREFIX.stats.json``)."""
    mode: str = option("document", choices=MODES)
    """``--mode``: ``document`` (one sequence per document) or ``chunk`` (documents concatenated and cut
    into chunks of at most --max-length tokens, at sentence ends where possible: PDS/DELT style)."""
    max_length: int | None = option(None, metavar="L")
    """``--max-length``: document mode: truncate longer documents (EOS kept); chunk mode (required): the
    chunk size, e.g. 1025."""
    workers: int | None = None
    """``--workers``: encoding processes (0: encode in the main process; default: one per core, at most 32);
    the output does not depend on it."""
    on_error: str = option("fail", choices=ON_ERROR)
    """``--on-error``: ``fail`` at the first bad line (file:line, exit 1, no output), or ``skip`` (count and
    report) bad lines."""
    batch_lines: int = internal(256)
    """Lines per batch handed to a worker."""
    batch_bytes: int = internal(1 << 18)
    """A batch is also closed once its raw lines reach this many bytes."""
    punkt_sample_chars: int = internal(2_000_000)
    """Chunk mode: characters of corpus text the Punkt sentence splitter is trained on."""
    progress: bool = internal(True)
    """Show a progress bar (on a terminal) or periodic log lines."""
    word_cache: bool = option(
        True,
        flag="--no-word-cache",
        help="Encode whole documents with the tokenizer's backend instead of the word cache (same ids; the cache "
        "applies to sentencepiece-style BPE and is several times faster, see docs/data.md).",
    )
    """``--no-word-cache`` turns it off: encode whole documents with the tokenizer's backend
    (same ids; the word cache is a speed-up for sentencepiece-style BPE, ``data/tokenizers/word_cache.py``)."""
    keep_fields: list[str] | None = option(None, metavar="F1,F2")
    """``--keep-fields``: input fields to keep beside the tokens (e.g. source,url): ``PREFIX.meta.jsonl``, one
    JSON object per sequence (null where a record lacks the field; chunk mode: the fields of the document the
    chunk starts in); carried by sample-proxy, select, order and merge (:mod:`lqs_megatron.data.datasets.meta`)."""
    shard: Shard | str | None = option(None, metavar="I/N")
    """``--shard``: process shard I of N only (0-based) and write ``OUT.shard-IIIII-of-NNNNN``; join the shards
    with ``lqs merge --shards OUT``. Default: from a Slurm job array (SLURM_ARRAY_TASK_ID/_COUNT) or torchrun's
    RANK/WORLD_SIZE, none outside them; ``none``: the whole input whatever the environment. A finished shard is
    not redone (docs/data.md)."""
    gigatoken: bool = option(
        True,
        flag="--no-gigatoken",
        help="Do not encode with the optional gigatoken package even where it gives the tokenizer's exact ids (it is "
        "used by default when installed; see docs/data.md).",
    )
    """``--no-gigatoken`` turns off the optional gigatoken backend (used where it gives the same ids,
    ``data/tokenizers/gigatoken_backend.py``)."""

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
        if isinstance(self.shard, str):
            self.shard = parse_shard(self.shard)
        if self.shard is not None and self.shard.count == 1:
            self.shard = None


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
    """With ``--keep-fields``: one sidecar line per document (:func:`~lqs_megatron.data.datasets.meta.meta_line`)."""


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
        self.encoder = BatchEncoder(config.tokenizer_dir, word_cache=config.word_cache, gigatoken=config.gigatoken)
        self.field, self.on_error, self.mode = config.field, config.on_error, config.mode
        self.max_length = config.max_length if config.mode == "document" else None
        self.dtype, self.eos, self.punkt_params = np.dtype(dtype), eos, punkt_params
        self.keep_fields = config.keep_fields
        self._sentences = None

    @property
    def threads(self) -> bool:
        """Whether worker threads can run this job (gigatoken and the native reader release the GIL)."""
        return self.mode == "document" and self.encoder.encoding == "gigatoken"

    def texts(self, path: str, nums: list[int], rows, skipped: list[BadLine], meta: list[bytes] | None) -> list[str]:
        if meta is None and not isinstance(rows, Columns):  # raw jsonl lines, no sidecar: the native reader
            fast = _C.jsonl_texts(rows, self.field)  # None when a line needs the reader below
            if fast is not None:
                return fast
        texts = []
        for n, obj in iter_records(path, nums, rows, self.on_error, skipped.append):
            try:
                texts.append(get_text(obj, self.field, path, n))
            except BadLine as e:
                if self.on_error == "fail":
                    raise
                skipped.append(e)
                continue
            if meta is not None:
                meta.append(meta_line(obj, self.keep_fields))
        return texts

    def __call__(self, task: tuple[str, list[int], list]) -> EncodedBatch:
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


def tokenize(config: TokenizeConfig) -> dict:
    """Run ``lqs tokenize``; return the statistics (also written to ``PREFIX.stats.json``).

    With ``config.shard`` the run writes shard ``I`` of ``N`` (:mod:`~lqs_megatron.data.preprocess.sharding`) to
    ``PREFIX.shard-IIIII-of-NNNNN``; a shard already finished with the same inputs and arguments is not redone.
    The output is locked for the run (:func:`~lqs_megatron.utils.lock.output_lock`).
    """
    out = shard_output(config.out_prefix, config.shard)
    inputs = {"--input": config.inputs, "--tokenizer": config.tokenizer_dir}
    with output_lock(out, step="tokenize", inputs=inputs):
        return _tokenize(config, out)


def run_args(config) -> dict:
    """The stats' ``args``: every flag but the progress switch and the shard (same for every shard of a run)."""
    return {k: v for k, v in asdict(config).items() if k not in ("progress", "shard")}


def finished_shard(out: str, identity: dict, ignore: tuple[str, ...] = ()) -> dict | None:
    """The stats of a finished shard at ``out`` whose ``identity`` keys match (``args`` compared without the
    keys in ``ignore``) and whose ``.idx`` is the one its stats describe; else None."""
    path = f"{out}.stats.json"
    if not (os.path.isfile(path) and dataset_exists(out)):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except ValueError:
        return None

    def strip(args):
        return {k: v for k, v in args.items() if k not in ignore} if isinstance(args, dict) else args

    same = all(strip(old.get(k)) == strip(v) if k == "args" else old.get(k) == v for k, v in identity.items())
    return old if same and old.get("idx_digest") == file_digest(idx_path(out)) else None


def _tokenize(config: TokenizeConfig, out: str) -> dict:
    t0 = time.perf_counter()
    encoder = BatchEncoder(config.tokenizer_dir, word_cache=config.word_cache, gigatoken=config.gigatoken)
    tok = encoder.tok  # loads it: a clear error for a missing directory or no EOS
    eos, vocab = encoder.eos_token_id, vocab_size(tok)
    dtype = optimal_dtype(vocab)
    plan = plan_inputs(config.inputs, config.shard)
    identity = {
        "args": run_args(config),
        "files": plan.files,
        "tokenizer": {"path": os.path.abspath(config.tokenizer_dir), "fingerprint": fingerprint(tok)},
    }
    if config.shard is not None:
        identity["shard"] = plan.describe()
        done = finished_shard(out, identity, ignore=("workers",))
        if done is not None:
            logger.info("tokenize: shard %s is already finished in %s (same inputs and arguments)", config.shard, out)
            return done
    first = ((f"{path}:{n}", text) for path, n, text in read_texts(plan.files, config.field, on_error="skip"))
    round_trip = check_round_trip(tok, first, config.tokenizer_dir)
    encoding = encoder.encoding if config.mode == "document" else "backend"
    punkt = chunker = None
    hooks, files = (None, None), ()
    if config.mode == "chunk":
        if encoder.backend is None:
            encoder.encode_with_offsets([])  # raises the clear error
        punkt = train_sentence_splitter(_sample_texts(plan.files, config.field, config.punkt_sample_chars))
        if config.shard is None:
            chunker = Chunker(config.max_length, dtype)
            hooks = chunk_hooks(chunker, config.keep_fields is not None)
        else:  # a shard keeps documents and their boundary flags: the merge cuts the chunks of the whole stream
            files = (StreamFile(boundaries_path(out)),)
            hooks = boundary_hooks(BitStream(files[0]))
    counts, skipped = write_batches(
        EncodeDocuments(config, dtype, eos, punkt),
        plan.batches([config.field, *(config.keep_fields or ())], config.batch_lines, config.batch_bytes),
        config.workers,
        out,
        dtype,
        desc=f"tokenize {os.path.basename(out)}",
        write=hooks[0],
        finish=hooks[1],
        progress=config.progress,
        meta=config.keep_fields is not None,
        extra_files=files,
        relocate=plan.relocate,
        allow_empty=config.shard is not None,
    )
    counts["seconds"] = time.perf_counter() - t0  # the whole run, set-up included
    extra = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_token_id": eos,
        "encoding": encoding,
        "round_trip": round_trip,
        **identity,
    }
    if chunker is not None:
        extra["chunking"] = chunker.stats()
    if config.keep_fields is not None:
        extra["meta"] = meta_path(out)
    if files:
        extra["chunk_boundaries"] = boundaries_path(out)
    return finish_stats("tokenize", out, counts, skipped, extra)


def boundaries_path(prefix: str) -> str:
    """A chunk-mode shard's per-token chunk-boundary flags (packed bits): ``PREFIX.chunk-boundaries.bin``."""
    return f"{prefix}.chunk-boundaries.bin"


def boundary_hooks(bits: BitStream):
    """:func:`write_batches`' ``(write, finish)`` for a chunk-mode shard: documents as sequences, flags to ``bits``."""

    def write(writer, out: EncodedBatch) -> list[bytes] | None:
        writer.add_documents(out.tokens, out.lengths)
        bits.write(out.flags)
        return out.meta

    def finish(writer) -> None:
        bits.close()

    return write, finish


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
    gigatoken: bool = True,
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
        gigatoken=gigatoken,
    )
    return tokenize(cfg)
