"""``lqs retokenize``: a dataset tokenized with tokenizer A -> the same data tokenized with B.

Every sequence is split into *segments* at A's EOS tokens (a segment ends with an EOS, or
at the end of the sequence). Each segment is decoded with A (``decode(ids,
skip_special_tokens=True)``, its EOS excluded) and re-encoded with B as ``B(text).input_ids``;
B's EOS goes exactly where A's was (not doubled if B's encoding already ends with it).
Sequence ``i`` of the output is the re-encoded segments of input sequence ``i``, and the
document indices are copied, so sequence and document structure are kept (lengths
change; nothing is truncated).

For a lossless tokenizer A and document-mode data, each segment is one original
document, so the result equals tokenizing the original texts with B (and A -> A is the
identity). Work is spread over worker processes in batches of whole documents; the output
does not depend on the number of workers.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, optimal_dtype
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.data.preprocess.sharding import Shard, parse_shard, shard_output, split_range
from lqs_megatron.data.preprocess.tokenize import (
    EncodedBatch,
    default_workers,
    finish_stats,
    finished_shard,
    run_args,
    write_batches,
)
from lqs_megatron.data.tokenizers.fingerprint import fingerprint
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, vocab_size
from lqs_megatron.errors import LQSError
from lqs_megatron.options import internal, option
from lqs_megatron.utils.lock import output_lock


@dataclass
class RetokenizeConfig:
    """What ``lqs retokenize`` does; every field is one flag."""

    data: str = option(metavar="PREFIX")
    """``--data``: the input dataset ``PREFIX`` (tokenized with the source tokenizer)."""
    src_tokenizer: str
    """``--src-tokenizer``: the tokenizer the input was made with (its EOS splits segments)."""
    dst_tokenizer: str
    """``--dst-tokenizer``: the tokenizer of the output."""
    out_prefix: str = option(flag="--out", metavar="PREFIX")
    """``--out``: the output ``PREFIX``."""
    workers: int | None = None
    """``--workers``: processes (0: in the main process; default: one per core)."""
    batch_tokens: int = internal(1 << 18)
    """Tokens (whole documents) per batch handed to a worker."""
    progress: bool = internal(True)
    """Show progress."""
    shard: Shard | str | None = option(None, metavar="I/N")
    """``--shard``: retokenize the documents ``[I*D/N, (I+1)*D/N)`` of shard I of N only, into
    ``OUT.shard-IIIII-of-NNNNN`` (join with ``lqs merge --shards OUT``). Default: from a Slurm job array or
    torchrun's RANK/WORLD_SIZE, none outside them; ``none``: the whole dataset."""

    def __post_init__(self):
        self.data, self.out_prefix = os.fspath(self.data), os.fspath(self.out_prefix)
        self.src_tokenizer, self.dst_tokenizer = os.fspath(self.src_tokenizer), os.fspath(self.dst_tokenizer)
        if self.workers is None:
            self.workers = default_workers()
        if self.workers < 0:
            raise LQSError(f"--workers must be >= 0, got {self.workers}")
        if os.path.abspath(self.data) == os.path.abspath(self.out_prefix):
            raise LQSError("--out must differ from --data")
        if isinstance(self.shard, str):
            self.shard = parse_shard(self.shard)


class Retokenize:
    """The worker's job: ``(tokens, sequence lengths, sequences per document)`` -> :class:`EncodedBatch`."""

    def __init__(self, src_dir: str, dst_dir: str, dtype: np.dtype):
        self.src, self.dst = BatchEncoder(src_dir), BatchEncoder(dst_dir)
        self.dtype = np.dtype(dtype)

    def __call__(self, task) -> EncodedBatch:
        tokens, lengths, per_doc = task
        eos_a, eos_b = self.src.eos_token_id, self.dst.eos_token_id
        ends = np.cumsum(lengths)
        is_eos = tokens == eos_a
        segments, closed, owner = [], [], []  # token slices, ended by an EOS?, sequence index
        start = 0
        for i, end in enumerate(ends.tolist()):
            cuts = start + np.flatnonzero(is_eos[start:end])
            s = start
            for c in cuts.tolist():
                segments.append(tokens[s:c])
                closed.append(True)
                owner.append(i)
                s = c + 1
            if s < end:
                segments.append(tokens[s:end])
                closed.append(False)
                owner.append(i)
            start = end
        ids = self.dst.encode(self.src.decode(segments)) if segments else []
        out_len = np.zeros(len(lengths), dtype=np.int64)
        for x, c, i in zip(ids, closed, owner):
            if c and (not x or x[-1] != eos_b):
                x.append(eos_b)
            out_len[i] += len(x)
        total = int(out_len.sum())
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
        if total and int(flat.max()) > np.iinfo(self.dtype).max:
            raise LQSError(f"the destination tokenizer produced id {int(flat.max())}, outside {self.dtype}")
        return EncodedBatch(
            flat.astype(self.dtype), out_len, chars=0, sequences_per_document=np.asarray(per_doc, dtype=np.int64)
        )


def document_batches(
    ds: IndexedDataset, batch_tokens: int, first: int = 0, stop: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(tokens, sequence lengths, sequences per document)`` for runs of whole documents ``[first, stop)``."""
    docs = ds.document_indices
    lengths = ds.sequence_lengths
    n_docs = len(docs) - 1 if stop is None else stop
    d = first
    while d < n_docs:
        s0 = int(docs[d])
        e = d + 1
        tok = int(lengths[s0 : int(docs[e])].sum(dtype=np.int64))
        while e < n_docs and tok < batch_tokens:
            tok += int(lengths[int(docs[e]) : int(docs[e + 1])].sum(dtype=np.int64))
            e += 1
        s1 = int(docs[e])
        yield ds.span(s0, s1).copy(), np.array(lengths[s0:s1], dtype=np.int64), np.diff(docs[d : e + 1])
        d = e


def _write(writer, out: EncodedBatch) -> None:
    per_doc = out.sequences_per_document
    if np.all(per_doc == 1):
        writer.add_documents(out.tokens, out.lengths)
        return
    seq = 0
    offset = 0
    for k in per_doc.tolist():
        n = int(out.lengths[seq : seq + k].sum())
        writer.add_items(out.tokens[offset : offset + n], out.lengths[seq : seq + k])
        writer.end_document()
        seq += k
        offset += n


def retokenize(config: RetokenizeConfig) -> dict:
    """Run ``lqs retokenize``; return the statistics (also in ``PREFIX.stats.json``).

    With ``config.shard``, shard ``I`` of ``N`` (whole documents) goes to ``PREFIX.shard-IIIII-of-NNNNN``
    (``lqs merge --shards PREFIX`` joins them); a finished shard is not redone. The output is locked.
    """
    out = shard_output(config.out_prefix, config.shard)
    inputs = {"--data": config.data, "--src-tokenizer": config.src_tokenizer, "--dst-tokenizer": config.dst_tokenizer}
    with output_lock(out, step="retokenize", inputs=inputs):
        return _retokenize(config, out)


def _retokenize(config: RetokenizeConfig, out: str) -> dict:
    t0 = time.perf_counter()
    ds = open_dataset(config.data)
    src, dst = BatchEncoder(config.src_tokenizer), BatchEncoder(config.dst_tokenizer)
    src.tok, dst.tok  # noqa: B018 - load both now: clear errors before any work
    vocab_a = vocab_size(src.tok)
    top = max((int(ds[i].max()) for i in range(min(len(ds), 64)) if ds.sequence_lengths[i]), default=-1)
    if top >= vocab_a:
        raise LQSError(
            f"{config.data} holds token id {top}, but --src-tokenizer has {vocab_a} ids: wrong source tokenizer?"
        )
    vocab = vocab_size(dst.tok)
    dtype = optimal_dtype(vocab)
    first, stop = split_range(ds.num_documents, config.shard)
    extra = {
        "source": {"data": config.data, "sequences": len(ds), "documents": ds.num_documents, "tokens": ds.num_tokens},
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_token_id": dst.eos_token_id,
        "src_eos_token_id": src.eos_token_id,
        "args": run_args(config),
        "tokenizer": {"path": os.path.abspath(config.dst_tokenizer), "fingerprint": fingerprint(dst.tok)},
    }
    if config.shard is not None:
        extra["shard"] = {"index": config.shard.index, "count": config.shard.count, "documents": [first, stop]}
        done = finished_shard(out, {k: extra[k] for k in ("source", "args", "tokenizer", "shard")}, ("workers",))
        if done is not None:
            return done
    counts, skipped = write_batches(
        Retokenize(config.src_tokenizer, config.dst_tokenizer, dtype),
        document_batches(ds, config.batch_tokens, first, stop),
        config.workers,
        out,
        dtype,
        desc=f"retokenize {os.path.basename(out)}",
        write=_write,
        progress=config.progress,
        allow_empty=config.shard is not None,
    )
    counts["seconds"] = time.perf_counter() - t0  # the whole run, set-up included
    return finish_stats("retokenize", out, counts, skipped, extra)
