"""Corpus scoring (``lqs score``): every sequence of an indexed dataset, data parallel, resumable.

Work is cut into **shards**: shard ``k`` covers the fixed index range
``[k * shard_size, min((k + 1) * shard_size, N))`` whatever the number of ranks. Rank 0
lists the shards not yet on disk and broadcasts the list; rank ``r`` computes the
unfinished shards ``r, r + world, r + 2 world, ...`` of that list. Each finished shard is
written atomically to ``OUT/shards/shard-XXXXX.npy`` (float32, the scores of its range in
dataset order), so a killed job loses at most the shards in flight; a restart with the
same arguments skips every shard already written and computes only the rest. When all
shards exist, rank 0 merges them into ``OUT/scores.npy`` (float32, dataset order,
atomic) and writes ``OUT/score_stats.json``.

A shard is always computed the same way (its own length-bucketed batches, see
:mod:`lqs_megatron.scorer.predict`), so the output does not depend on the number of
ranks. ``OUT/shards/meta.json`` records the dataset, the scorer and the shard size; a
restart against other data, another scorer or another shard size is refused rather than
mixing results. The output directory must be on a filesystem every rank sees (multi-node).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.fingerprint import check_same_tokenizer, dataset_tokenizer
from lqs_megatron.data.indexed import IndexedDataset, idx_path
from lqs_megatron.data.progress import Progress
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.report import report_if_sidecar
from lqs_megatron.scorer.config import ScoreOptions
from lqs_megatron.scorer.model import Scorer, load_scorer
from lqs_megatron.scorer.predict import predict
from lqs_megatron.utils.atomic import save_json, save_npy

logger = logging.getLogger(__name__)


def shard_path(out_dir: str | os.PathLike, k: int) -> Path:
    return Path(out_dir) / "shards" / f"shard-{k:05d}.npy"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def run_meta(ds: IndexedDataset, ckpt: Path, shard_size: int) -> dict:
    """What a shard's content depends on; compared on restart."""
    return {
        "num_sequences": len(ds),
        "num_tokens": ds.num_tokens,
        "index_digest": _file_digest(Path(idx_path(ds.prefix))),
        "scorer_digest": _file_digest(ckpt / "model.safetensors") + _file_digest(ckpt / "scorer.json"),
        "shard_size": shard_size,
    }


def prepare_for_inference(
    model: Scorer, device: torch.device, bf16: bool, compile: bool
) -> tuple[torch.nn.Module, torch.dtype | None]:
    """``(module, autocast dtype)``: the scorer on ``device`` in eval mode, in bf16 when asked, compiled when asked.

    Our decoder's parameters are cast to bf16 (it has no buffers: the rotary tables are computed
    in float32 on every call; pooling and the head run in float32); an HF backbone keeps float32 weights and runs
    under bf16 autocast (safe whatever its buffers are).
    """
    model = model.to(device).eval()
    amp = None
    if bf16 and model.hf_backbone:
        amp = torch.bfloat16
    elif bf16:
        for p in model.backbone.parameters():
            p.data = p.data.to(torch.bfloat16)
    if compile:
        model = torch.compile(model, dynamic=True)
    return model, amp


def _check_meta(shard_dir: Path, meta: dict) -> str | None:
    """Error message when ``shard_dir`` holds shards of another run; else write the meta (first run)."""
    import json

    path = shard_dir / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
            return (
                f"{shard_dir} holds shards of another run ({', '.join(diff)} differ); "
                "use a fresh --out or delete that directory"
            )
        return None
    if any(shard_dir.glob("shard-*.npy")):
        return f"{shard_dir} holds shards but no meta.json; use a fresh --out or delete that directory"
    save_json(path, meta)
    return None


def score_dataset(
    scorer: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    options: ScoreOptions | None = None,
    dims=None,
    progress: bool = True,
    shard=None,
) -> dict:
    """Score every sequence of ``data`` with the scorer checkpoint; write ``out_dir/scores.npy``.

    ``dims``: a :class:`lqs_megatron.parallel.dims.ParallelDims` (default: one process on the
    best device). ``shard`` (:class:`lqs_megatron.data.sharding.Shard`): score sequences
    ``[I*n/N, (I+1)*n/N)`` only, into ``out_dir.shard-IIIII-of-NNNNN`` (``lqs merge --shards``
    joins them). Rank 0 holds the output's lock. Returns the run's statistics (also written to
    ``score_stats.json``).
    """
    from lqs_megatron.data.sharding import shard_output
    from lqs_megatron.parallel.dims import ParallelDims
    from lqs_megatron.utils.lock import output_lock

    dims = dims or ParallelDims(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out = shard_output(out_dir, shard)
    inputs = {"--scorer": scorer, "--data": data, "--tokenizer": tokenizer}
    with output_lock(out, enabled=dims.is_main, step="score", inputs=inputs, kind="dir"):
        return _score_dataset(scorer, data, out, tokenizer, options or ScoreOptions(), dims, progress, shard)


def _score_dataset(scorer, data, out_dir, tokenizer, opts: ScoreOptions, dims, progress: bool, shard) -> dict:
    from lqs_megatron.data.sharding import split_range

    t0 = time.time()
    ds = IndexedDataset(data)
    if len(ds) == 0:
        raise LQSError(f"dataset {str(data)!r} is empty: nothing to score")
    # the whole dataset unless sharded; a shard is whole restart units, so every score is computed in the
    # same batch as in one run (bucketed batches decide the last bits of a score)
    begin, stop = split_range(len(ds), shard, opts.shard_size)
    n = stop - begin
    if shard is not None and n == 0:
        logger.warning("shard %s of %d sequences in units of --shard-size %d is empty", shard, len(ds), opts.shard_size)
    model, cfg, ckpt = load_scorer(scorer)
    check_same_tokenizer(
        cfg.tokenizer,
        dataset_tokenizer(data, tokenizer),
        f"dataset {str(data)!r}",
        f"scorer {ckpt}",
        hint=" (pass --tokenizer DIR to check it)",
    )
    if cfg.bos_token_id is None and (ds.sequence_lengths == 0).any():
        raise LQSError(f"dataset {str(data)!r}: sequence {int(np.argmax(ds.sequence_lengths == 0))} is empty")

    out = Path(out_dir)
    shard_dir = out / "shards"
    ranges = shard_ranges(n, opts.shard_size)  # relative to ``begin``
    plan = None
    if dims.is_main:
        shard_dir.mkdir(parents=True, exist_ok=True)
        for stale in shard_dir.glob("*.tmp-*"):  # left by a killed run; no rank is writing yet
            stale.unlink(missing_ok=True)
        sharded = {"range": [begin, stop]} if shard is not None else {}
        err = _check_meta(shard_dir, {**run_meta(ds, ckpt, opts.shard_size), **sharded})
        todo = [k for k in range(len(ranges)) if not shard_path(out, k).is_file()]
        plan = {"error": err, "todo": todo}
    plan = dims.broadcast_object(plan)
    if plan["error"]:
        raise LQSError(plan["error"])
    todo = plan["todo"]
    mine = todo[dims.rank :: dims.world_size]
    logger.info(
        "%d sequences in %d shard(s): %d already done, %d to compute on %d rank(s)",
        n,
        len(ranges),
        len(ranges) - len(todo),
        len(todo),
        dims.world_size,
    )

    device = dims.device
    net, amp = prepare_for_inference(model, device, opts.bf16 and device.type == "cuda", opts.compile)
    pad_multiple = 8 if device.type == "cuda" else 1
    my_seqs = sum(ranges[k][1] - ranges[k][0] for k in mine)
    done = {"seqs": 0, "tokens": 0}
    desc = "scoring" if dims.world_size == 1 else f"scoring (rank 0 of {dims.world_size})"  # its share, its rates
    bar = Progress(desc, enabled=progress and dims.is_main, unit="seq", total=my_seqs)
    t_compute = time.time()

    def on_batch(seqs: int, tokens: int) -> None:
        done["seqs"] += seqs
        done["tokens"] += tokens
        bar.update(seqs, tokens)

    for k in mine:
        start, end = ranges[k]
        scores = predict(
            net,
            cfg,
            ds,
            np.arange(begin + start, begin + end),
            device,
            max_tokens=opts.max_tokens,
            max_batch_size=opts.max_batch_size,
            pad_multiple=pad_multiple,
            on_batch=on_batch,
            autocast=amp,
        )
        save_npy(shard_path(out, k), scores)
        logger.debug("shard %d [%d, %d) written", k, start, end)
    bar.close()
    compute_s = time.time() - t_compute
    totals = torch.tensor([done["seqs"], done["tokens"]], dtype=torch.float64, device=device)
    totals = dims.all_reduce(totals).cpu()
    stats = None
    dims.barrier()
    if dims.is_main:
        stats = merge_shards(out, n, opts.shard_size)
        if opts.parquet:
            from lqs_megatron.data.scores import write_scores_parquet

            write_scores_parquet(out / "scores.parquet", np.load(out / "scores.npy"), data, begin)
        if shard is not None:
            stats.update(shard={"index": shard.index, "count": shard.count, "range": [begin, stop]})
        stats.update(
            num_shards=len(ranges),
            shards_skipped=len(ranges) - len(todo),
            shards_computed=len(todo),
            world_size=dims.world_size,
            sequences_computed=int(totals[0]),
            tokens_computed=int(totals[1]),
            compute_seconds=round(compute_s, 3),
            sequences_per_s=round(float(totals[0]) / max(compute_s, 1e-9), 2),
            tokens_per_s=round(float(totals[1]) / max(compute_s, 1e-9), 2),
            seconds=round(time.time() - t0, 3),
            scorer=str(ckpt),
            data=str(data),
            device=str(device),
            bf16=bool(opts.bf16 and device.type == "cuda"),
            compile=opts.compile,
            parquet=opts.parquet,
        )
        save_json(out / "score_stats.json", stats)
        report_if_sidecar(out / "report", out / "scores.npy", str(data), tokenizer=tokenizer)  # lqs/report.py
        logger.info(
            "scored %d sequences (%d computed, %.0f seq/s, %.0f tok/s over %d rank(s)) -> %s",
            n,
            stats["sequences_computed"],
            stats["sequences_per_s"],
            stats["tokens_per_s"],
            dims.world_size,
            out / "scores.npy",
        )
    stats = dims.broadcast_object(stats)
    return stats


def merge_shards(out_dir: str | os.PathLike, n: int, shard_size: int) -> dict:
    """Concatenate every shard into ``out_dir/scores.npy`` (atomic); return summary statistics."""
    out = Path(out_dir)
    parts = []
    for k, (start, end) in enumerate(shard_ranges(n, shard_size)):
        p = shard_path(out, k)
        if not p.is_file():
            raise LQSError(f"{p} is missing; rerun the same command to compute it")
        a = np.load(p)
        if a.shape != (end - start,) or a.dtype != np.float32:
            raise LQSError(f"{p}: expected {end - start} float32 scores, found {a.dtype} {a.shape}")
        parts.append(a)
    scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)  # none: an empty --shard
    save_npy(out / "scores.npy", scores)
    summary = {k: float(getattr(scores, k)()) if len(scores) else None for k in ("mean", "std", "min", "max")}
    return {"num_sequences": n, "shard_size": shard_size, **summary}
