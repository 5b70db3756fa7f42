"""``lqs merge --shards OUT``: join the shards of a sharded run into exactly what one run writes.

What the shards are is read from what they wrote (:func:`merge_shards`):

- **datasets** (``tokenize``, ``retokenize``: ``OUT.shard-*.bin/.idx`` with their
  ``.stats.json``): the sequences back to back (:func:`~lqs_megatron.data.datasets.merge.merge_datasets`,
  provenance sidecars included). A chunk-mode ``tokenize`` shard holds its documents and
  their chunk-boundary flags; the merge cuts the chunks over the whole stream, as one run
  does, so the chunks are the same whatever the shard count. ``OUT.stats.json`` is the one
  run's: every count summed, the first 20 skipped-line messages in input order; only the
  timing keys (``seconds``, ``docs_per_s``, ``tokens_per_s``: the shards' seconds summed) differ.
- **scores** (``score``: ``OUT.shard-*/scores.npy``): ``OUT/scores.npy`` (and
  ``OUT/scores.parquet`` when the shards wrote one), ``OUT/score_stats.json``.
- **exports** (``export-jsonl``: ``OUT.shard-*.jsonl`` or ``.parquet``): the files joined
  (:func:`lqs_megatron.data.preprocess.export.merge_exports`).

Every shard must be finished (its stats or output file present) and of the same run
(command, arguments, inputs, tokenizer); anything else is an error naming the shard.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter, dataset_exists, idx_path
from lqs_megatron.data.datasets.merge import merge_datasets
from lqs_megatron.data.datasets.meta import meta_path
from lqs_megatron.data.preprocess.chunking import Chunker
from lqs_megatron.data.preprocess.jsonl import SkipLog
from lqs_megatron.data.preprocess.sharding import check_tiling, find_shard_outputs
from lqs_megatron.data.preprocess.tokenize import boundaries_path
from lqs_megatron.data.preprocess.writing import (
    TIMING_KEYS,
    ChunkProvenance,
    StreamFile,
    check_not_empty,
    drop_stale,
    file_digest,
    finish_stats,
)
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.lock import output_lock

logger = logging.getLogger(__name__)

_BASE_KEYS = (
    "command",
    "output",
    "documents",
    "sequences",
    "tokens",
    "chars",
    "skipped",
    "truncated_documents",
    "truncated_tokens",
    *TIMING_KEYS,
)
_SHARD_ONLY = ("shard", "chunk_boundaries", "idx_digest")
_BLOCK_TOKENS = 1 << 22


def merge_shards(out: str | os.PathLike) -> dict:
    """Join the shards of a run with ``--out out`` (see the module docstring); return its summary."""
    out = os.fspath(out).rstrip("/")
    if out.endswith((".jsonl", ".parquet")):
        from lqs_megatron.data.preprocess.export import merge_exports

        return merge_exports(out, find_shard_outputs(out))
    if glob.glob(glob.escape(out) + ".shard-*-of-*/"):  # score output directories
        return merge_score_shards(out, find_shard_outputs(out, marker="/score_stats.json"))
    shards = find_shard_outputs(out, marker=".stats.json")
    if not dataset_exists(shards[0]):
        raise LQSError(f"{shards[0]}.stats.json exists but not the dataset beside it; rerun that shard")
    return merge_dataset_shards(out, shards)


def _load_stats(prefix: str) -> dict:
    path = f"{prefix}.stats.json"
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        raise LQSError(f"{path}: not a readable stats file ({e}); rerun that shard") from None
    if stats.get("idx_digest") != file_digest(idx_path(prefix)):
        raise LQSError(f"{path} does not describe {idx_path(prefix)} (another run wrote one of them); rerun that shard")
    return stats


def _same_run(stats: list[dict], shards: list[str]) -> None:
    def key(s: dict) -> dict:
        args = {k: v for k, v in (s.get("args") or {}).items() if k != "workers"}
        return {"command": s.get("command"), "args": args, **{k: s.get(k) for k in ("files", "tokenizer", "source")}}

    ref = key(stats[0])
    for i, (s, path) in enumerate(zip(stats, shards)):
        info = s.get("shard") or {}
        if info.get("index") != i or info.get("count") != len(shards):
            raise LQSError(
                f"{path}.stats.json is not shard {i}/{len(shards)} (it says {info.get('index')}/{info.get('count')})"
            )
        diff = [k for k, v in key(s).items() if v != ref[k]]
        if diff:
            raise LQSError(
                f"{path} belongs to another run than {shards[0]} ({', '.join(diff)} differ); "
                "rerun it with the same command"
            )
    if "segments" in (stats[0].get("shard") or {}):  # tokenize: byte ranges / rows of the input files
        gap = check_tiling([s["shard"] for s in stats])
        if gap:
            raise LQSError(
                f"the shards of {shards[0].rsplit('.shard-', 1)[0]} do not tile the input: {gap}; "
                "rerun every shard on the same input files"
            )


def merge_dataset_shards(out: str, shards: list[str]) -> dict:
    """Merge ``tokenize``/``retokenize`` shard datasets into ``out`` (+ ``out.stats.json``, sidecar)."""
    stats = [_load_stats(p) for p in shards]
    _same_run(stats, shards)
    skipped = SkipLog()
    counts = {k: 0 for k in ("documents", "truncated_documents", "truncated_tokens", "chars", "seconds")}
    for s in stats:
        for k in counts:
            counts[k] += s[k]
        for kind, n in s["skipped"]["by_reason"].items():
            skipped.counts[kind] = skipped.counts.get(kind, 0) + n
        skipped.examples.extend(s["skipped"]["examples"][: skipped.max_examples - len(skipped.examples)])
    check_not_empty(counts["documents"], skipped)
    first = stats[0]
    extra = {k: v for k, v in first.items() if k not in _BASE_KEYS and k not in _SHARD_ONLY}
    with output_lock(out, step="merge"):
        if "chunk_boundaries" in first:
            chunking = _chunk_shards(out, shards, stats, "meta" in first)
            seq, tok = chunking["chunks"], int(IndexedDataset(out).num_tokens)
            extra["chunking"] = chunking
        else:
            info = merge_datasets(shards, out)
            seq, tok = info["num_sequences"], info["num_tokens"]
        if "meta" in extra:
            extra.pop("meta")
            extra["meta"] = meta_path(out)
        counts.update(sequences=seq, tokens=tok)
        merged = finish_stats(first["command"], out, counts, skipped, extra)
    logger.info("merged %d shards -> %s", len(shards), out)
    return merged


def _chunk_shards(out: str, shards: list[str], stats: list[dict], meta: bool) -> dict:
    """Cut the chunks of the shards' document streams, in order, into ``out`` (as one chunk-mode run does)."""
    args = stats[0]["args"]
    dtype = np.dtype(stats[0]["dtype"])
    chunker = Chunker(args["max_length"], dtype)
    provenance = ChunkProvenance() if meta else None
    with IndexedDatasetWriter(out, dtype) as writer, StreamFile(meta_path(out), meta) as sidecar:
        for prefix in shards:
            ds = IndexedDataset(prefix)
            bpath = boundaries_path(prefix)
            bits = np.fromfile(bpath, dtype=np.uint8) if os.path.isfile(bpath) else np.zeros(0, np.uint8)
            if len(bits) != (ds.num_tokens + 7) // 8:
                raise LQSError(f"{bpath}: {len(bits)} bytes for {ds.num_tokens} tokens; rerun that shard")
            lines = open(meta_path(prefix), "rb") if meta else None
            try:
                for start, stop, t0 in _blocks(ds):
                    tokens = ds.span(start, stop)
                    t1 = t0 + len(tokens)
                    flags = np.unpackbits(bits[t0 // 8 : (t1 + 7) // 8])[t0 % 8 : t0 % 8 + len(tokens)]
                    chunk_tokens, lengths = chunker.feed(tokens, flags)
                    writer.add_documents(chunk_tokens, lengths)
                    if provenance is not None:
                        provenance.add_documents(
                            ds.sequence_lengths[start:stop], [lines.readline() for _ in range(stop - start)]
                        )
                        sidecar.write(provenance.chunks(lengths))
            finally:
                if lines is not None:
                    lines.close()
        tokens, lengths = chunker.finish()
        writer.add_documents(tokens, lengths)
        if provenance is not None:
            sidecar.write(provenance.chunks(lengths))
        drop_stale(out, meta)
    return chunker.stats()


def _blocks(ds: IndexedDataset):
    """``(first, stop, token offset)`` runs of whole sequences of about ``_BLOCK_TOKENS`` tokens."""
    ends = np.cumsum(ds.sequence_lengths.astype(np.int64))
    start, t0 = 0, 0
    while start < len(ds):
        stop = max(int(np.searchsorted(ends, t0 + _BLOCK_TOKENS, side="right")), start + 1)
        yield start, stop, t0
        t0 = int(ends[stop - 1])
        start = stop


def merge_score_shards(out: str, shards: list[str]) -> dict:
    """Join ``lqs score`` shard directories into ``out/scores.npy`` (+ ``scores.parquet`` when the shards wrote
    one, ``score_stats.json``): the scores one run writes, byte for byte."""
    from lqs_megatron.data.datasets.scores import write_scores_parquet
    from lqs_megatron.utils.atomic import save_json, save_npy

    stats = []
    for i, path in enumerate(shards):
        with open(os.path.join(path, "score_stats.json")) as f:
            s = json.load(f)
        info = s.get("shard") or {}
        if info.get("index") != i or info.get("count") != len(shards):
            raise LQSError(f"{path}/score_stats.json is not shard {i}/{len(shards)}; rerun that shard")
        if "shard_size" in s:  # written when the restart units were called shards
            s["part_size"] = s.pop("shard_size")
        stats.append(s)
    for key in ("data", "scorer", "part_size", "parquet"):
        if any(s.get(key) != stats[0].get(key) for s in stats):
            raise LQSError(f"the shards of {out} come from different runs ({key} differs); rerun them alike")
    ranges = [s["shard"]["range"] for s in stats]
    if ranges[0][0] != 0 or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
        raise LQSError(f"the shards of {out} do not cover the dataset in order ({ranges})")
    parts = []
    for path, (a, b) in zip(shards, ranges):
        part = np.load(os.path.join(path, "scores.npy"))
        if part.shape != (b - a,) or part.dtype != np.float32:
            raise LQSError(f"{path}/scores.npy: expected {b - a} float32 scores, found {part.dtype} {part.shape}")
        parts.append(part)
    scores = np.concatenate(parts)
    with output_lock(out, step="merge", kind="dir"):
        os.makedirs(out, exist_ok=True)
        save_npy(os.path.join(out, "scores.npy"), scores)
        if stats[0].get("parquet"):
            write_scores_parquet(os.path.join(out, "scores.parquet"), scores, stats[0]["data"])
        summary = {
            "num_sequences": len(scores),
            "part_size": stats[0]["part_size"],
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            "min": float(scores.min()),
            "max": float(scores.max()),
            "merged_shards": len(shards),
            **{k: sum(s[k] for s in stats) for k in ("sequences_computed", "tokens_computed", "compute_seconds")},
            **{k: stats[0][k] for k in ("scorer", "data", "device", "bf16", "compile", "parquet") if k in stats[0]},
        }
        save_json(os.path.join(out, "score_stats.json"), summary)
    logger.info("merged %d score shards -> %s/scores.npy", len(shards), out)
    return summary
