"""Corpus scoring (``lqs score``): every sequence of an indexed dataset, data parallel, resumable.

Work is cut into **parts** (the units of restart): part ``k`` covers the fixed index range
``[k * part_size, min((k + 1) * part_size, N))`` whatever the number of ranks. Rank 0
lists the parts not yet on disk and broadcasts the list; rank ``r`` computes the
unfinished parts ``r, r + world, r + 2 world, ...`` of that list. Each finished part is
written atomically to ``OUT/parts/part-XXXXX.npy`` (float32, the scores of its range in
dataset order), so a killed job loses at most the parts in flight; a restart with the
same arguments skips every part already written and computes only the rest. When all
parts exist, rank 0 merges them into ``OUT/scores.npy`` (float32, dataset order,
atomic) and writes ``OUT/score_stats.json``. (A *shard* is something else: one of the
independent ``--shard I/N`` runs that ``lqs merge --shards`` joins, :mod:`lqs_megatron.data.preprocess.sharding`.)

A part is always computed the same way (its own length-bucketed batches, see
:mod:`lqs_megatron.scorer.predict`), so the output does not depend on the number of
ranks. ``OUT/parts/meta.json`` records the dataset, the scorer and the part size; a
restart against other data, another scorer or another part size is refused rather than
mixing results. An output directory of a release that called parts shards
(``OUT/shards/shard-XXXXX.npy``) is renamed to this layout and resumes. The output
directory must be on a filesystem every rank sees (multi-node).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.data.preprocess.writing import file_digest
from lqs_megatron.data.tokenizers.fingerprint import check_same_tokenizer, dataset_tokenizer
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.report import report_if_sidecar
from lqs_megatron.scorer.config import ScoreOptions, ScoreRun
from lqs_megatron.scorer.model import Scorer, ScorerConfig, load_scorer
from lqs_megatron.scorer.predict import predict
from lqs_megatron.utils.atomic import save_json, save_npy
from lqs_megatron.utils.progress import Progress

logger = logging.getLogger(__name__)


def part_path(out_dir: str | os.PathLike, k: int) -> Path:
    return Path(out_dir) / "parts" / f"part-{k:05d}.npy"


def part_ranges(n: int, part_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + part_size, n)) for s in range(0, n, part_size)]


def run_meta(ds: IndexedDataset, ckpt: Path, part_size: int) -> dict:
    """What a part's content depends on; compared on restart."""
    return {
        "num_sequences": len(ds),
        "num_tokens": ds.num_tokens,
        # PREFIX.idx; a view: its view file, its indices and its source's .idx
        "index_digest": "".join(file_digest(p) for p in ds.index_files),
        "data_size": os.path.getsize(ds.data_path),
        "data_digest": file_digest(ds.data_path, sampled=True),  # a .bin rewritten in place
        "scorer_digest": file_digest(ckpt / "model.safetensors") + file_digest(ckpt / "scorer.json"),
        "part_size": part_size,
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


def _adopt_old_layout(out: Path) -> None:
    """Rename the restart units of a run written when they were called shards (``OUT/shards/shard-XXXXX.npy``,
    ``shard_size`` in its meta.json) to ``OUT/parts/part-XXXXX.npy``, so that the run resumes. Every step can be
    redone, so a run killed in the middle of this finishes it on its next start."""
    old, new = out / "shards", out / "parts"
    if not old.is_dir():
        return
    if new.exists():
        raise LQSError(f"{out} holds both shards/ (an older lqs score's) and parts/; delete one of them")
    for p in old.glob("shard-*.npy"):
        p.rename(old / ("part-" + p.name.removeprefix("shard-")))
    meta = old / "meta.json"
    if meta.is_file():
        values = json.loads(meta.read_text())
        if "shard_size" in values:
            values["part_size"] = values.pop("shard_size")
            save_json(meta, values)
    old.rename(new)
    logger.info("%s: renamed to %s (the restart units are now called parts)", old, new)


#: meta.json keys that runs of an older release did not record: their absence is no difference (they are added)
_LATER_KEYS = ("data_size", "data_digest")


def _check_meta(part_dir: Path, meta: dict, data: str) -> str | None:  # data: the token file (.bin)
    """Error message when ``part_dir`` holds parts of another run; else write the meta (first run)."""
    path = part_dir / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in meta if old.get(k) != meta[k] and not (k in _LATER_KEYS and k not in old)]
        if diff and set(diff) <= {"data_size", "data_digest"}:
            return (
                f"{data} changed since the parts in {part_dir} were scored (its size or content differs); "
                "use a fresh --out or delete that directory"
            )
        if diff:
            return (
                f"{part_dir} holds parts of another run ({', '.join(diff)} differ); "
                "use a fresh --out or delete that directory"
            )
        if any(k not in old for k in meta):
            save_json(path, {**old, **meta})
        return None
    if any(part_dir.glob("part-*.npy")):
        return f"{part_dir} holds parts but no meta.json; use a fresh --out or delete that directory"
    save_json(path, meta)
    return None


def score_dataset(run: ScoreRun, options: ScoreOptions | None = None, dims=None) -> dict:
    """Score every sequence of ``run.data`` with the scorer checkpoint ``run.scorer``; write ``run.out/scores.npy``.

    ``dims``: a :class:`lqs_megatron.parallel.dims.ParallelDims` (default: one process on the
    best device). ``run.shard`` (:class:`lqs_megatron.data.preprocess.sharding.Shard`): score sequences
    ``[I*n/N, (I+1)*n/N)`` only, into ``run.out.shard-IIIII-of-NNNNN`` (``lqs merge --shards``
    joins them). Rank 0 holds the output's lock. Returns the run's statistics (also written to
    ``score_stats.json``).
    """
    from lqs_megatron.data.preprocess.sharding import shard_output
    from lqs_megatron.parallel.dims import ParallelDims
    from lqs_megatron.utils.lock import output_lock

    dims = dims or ParallelDims(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(shard_output(run.out, run.shard))
    inputs = {"--scorer": run.scorer, "--data": run.data, "--tokenizer": run.tokenizer}
    with output_lock(out, enabled=dims.is_main, step="score", inputs=inputs, kind="dir"):
        job = _plan(run, options or ScoreOptions(), out, dims)
        totals = _compute(job, dims, run.progress)
        return _finish(job, totals, dims)


@dataclass
class _Job:
    """What :func:`_plan` decided: the data, the scorer, this run's range and the parts every rank computes."""

    run: ScoreRun
    opts: ScoreOptions
    out: Path
    ds: IndexedDataset
    model: Scorer
    cfg: ScorerConfig
    ckpt: Path
    begin: int  # this run's sequences [begin, stop): all of them unless it is a shard
    stop: int
    ranges: list[tuple[int, int]]  # the parts, relative to ``begin``
    todo: list[int]  # the parts not on disk yet
    t0: float


def _plan(run: ScoreRun, opts: ScoreOptions, out: Path, dims) -> _Job:
    """Check the data against the scorer; rank 0 lists the parts still to compute (after checking that the parts
    on disk belong to this run) and every rank gets the list."""
    from lqs_megatron.data.preprocess.sharding import split_range

    t0 = time.time()
    data, shard = run.data, run.shard
    ds = open_dataset(data)
    if len(ds) == 0:
        raise LQSError(f"dataset {str(data)!r} is empty: nothing to score")
    # the whole dataset unless sharded; a shard is whole parts, so every score is computed in the
    # same batch as in one run (bucketed batches decide the last bits of a score)
    begin, stop = split_range(len(ds), shard, opts.part_size)
    if shard is not None and stop == begin:
        logger.warning("shard %s of %d sequences in units of --part-size %d is empty", shard, len(ds), opts.part_size)
    model, cfg, ckpt = load_scorer(run.scorer)
    check_same_tokenizer(
        cfg.tokenizer,
        dataset_tokenizer(data, run.tokenizer),
        f"dataset {str(data)!r}",
        f"scorer {ckpt}",
        hint=" (pass --tokenizer DIR to check it)",
        allow=run.allow_tokenizer_mismatch,
    )
    if cfg.bos_token_id is None and (ds.sequence_lengths == 0).any():
        raise LQSError(f"dataset {str(data)!r}: sequence {int(np.argmax(ds.sequence_lengths == 0))} is empty")

    part_dir = out / "parts"
    ranges = part_ranges(stop - begin, opts.part_size)
    plan = None
    if dims.is_main:
        _adopt_old_layout(out)
        part_dir.mkdir(parents=True, exist_ok=True)
        for stale in part_dir.glob("*.tmp-*"):  # left by a killed run; no rank is writing yet
            stale.unlink(missing_ok=True)
        sharded = {"range": [begin, stop]} if shard is not None else {}
        err = _check_meta(part_dir, {**run_meta(ds, ckpt, opts.part_size), **sharded}, ds.data_path)
        todo = [k for k in range(len(ranges)) if not part_path(out, k).is_file()]
        plan = {"error": err, "todo": todo}
    plan = dims.broadcast_object(plan)
    if plan["error"]:
        raise LQSError(plan["error"])
    todo = plan["todo"]
    logger.info(
        "%d sequences in %d part(s): %d already done, %d to compute on %d rank(s)",
        stop - begin,
        len(ranges),
        len(ranges) - len(todo),
        len(todo),
        dims.world_size,
    )
    return _Job(run, opts, out, ds, model, cfg, ckpt, begin, stop, ranges, todo, t0)


def _compute(job: _Job, dims, progress: bool) -> dict:
    """Score this rank's share of the missing parts (every ``world``-th), each written when done; return the
    sequences and tokens computed over all ranks and this rank's compute time."""
    opts, device = job.opts, dims.device
    mine = job.todo[dims.rank :: dims.world_size]
    net, amp = prepare_for_inference(job.model, device, opts.bf16 and device.type == "cuda", opts.compile)
    pad_multiple = 8 if device.type == "cuda" else 1
    my_seqs = sum(job.ranges[k][1] - job.ranges[k][0] for k in mine)
    done = {"seqs": 0, "tokens": 0}
    desc = "scoring" if dims.world_size == 1 else f"scoring (rank 0 of {dims.world_size})"  # its share, its rates
    bar = Progress(desc, enabled=progress and dims.is_main, unit="seq", total=my_seqs)
    t_compute = time.time()

    def on_batch(seqs: int, tokens: int) -> None:
        done["seqs"] += seqs
        done["tokens"] += tokens
        bar.update(seqs, tokens)

    for k in mine:
        start, end = job.ranges[k]
        scores = predict(
            net,
            job.cfg,
            job.ds,
            np.arange(job.begin + start, job.begin + end),
            device,
            max_tokens=opts.max_tokens,
            max_batch_size=opts.micro_batch_size,
            pad_multiple=pad_multiple,
            on_batch=on_batch,
            autocast=amp,
        )
        save_npy(part_path(job.out, k), scores)
        logger.debug("part %d [%d, %d) written", k, start, end)
    bar.close()
    compute_s = time.time() - t_compute
    totals = torch.tensor([done["seqs"], done["tokens"]], dtype=torch.float64, device=device)
    totals = dims.all_reduce(totals).cpu()
    return {"seqs": int(totals[0]), "tokens": int(totals[1]), "seconds": compute_s}


def _finish(job: _Job, totals: dict, dims) -> dict:
    """Once every rank is done, rank 0 merges the parts into ``scores.npy`` (and ``scores.parquet``), writes
    ``score_stats.json`` and the report sidecar; every rank returns the statistics."""
    run, opts, out, device = job.run, job.opts, job.out, dims.device
    n, compute_s = job.stop - job.begin, totals["seconds"]
    stats = None
    dims.barrier()
    if dims.is_main:
        stats = merge_parts(out, n, opts.part_size)
        if opts.parquet:
            from lqs_megatron.data.datasets.scores import write_scores_parquet

            write_scores_parquet(out / "scores.parquet", np.load(out / "scores.npy"), run.data, job.begin)
        if run.shard is not None:
            stats.update(shard={"index": run.shard.index, "count": run.shard.count, "range": [job.begin, job.stop]})
        stats.update(
            num_parts=len(job.ranges),
            parts_skipped=len(job.ranges) - len(job.todo),
            parts_computed=len(job.todo),
            world_size=dims.world_size,
            sequences_computed=totals["seqs"],
            tokens_computed=totals["tokens"],
            compute_seconds=round(compute_s, 3),
            sequences_per_s=round(totals["seqs"] / max(compute_s, 1e-9), 2),
            tokens_per_s=round(totals["tokens"] / max(compute_s, 1e-9), 2),
            seconds=round(time.time() - job.t0, 3),
            scorer=str(job.ckpt),
            data=str(run.data),
            device=str(device),
            bf16=bool(opts.bf16 and device.type == "cuda"),
            compile=opts.compile,
            parquet=opts.parquet,
        )
        save_json(out / "score_stats.json", stats)
        report_if_sidecar(out / "report", out / "scores.npy", str(run.data), tokenizer=run.tokenizer)  # lqs/report.py
        logger.info(
            "scored %d sequences (%d computed, %.0f seq/s, %.0f tok/s over %d rank(s)) -> %s",
            n,
            stats["sequences_computed"],
            stats["sequences_per_s"],
            stats["tokens_per_s"],
            dims.world_size,
            out / "scores.npy",
        )
    return dims.broadcast_object(stats)


def merge_parts(out_dir: str | os.PathLike, n: int, part_size: int) -> dict:
    """Concatenate every part into ``out_dir/scores.npy`` (atomic); return summary statistics."""
    out = Path(out_dir)
    parts = []
    for k, (start, end) in enumerate(part_ranges(n, part_size)):
        p = part_path(out, k)
        if not p.is_file():
            raise LQSError(f"{p} is missing; rerun the same command to compute it")
        a = np.load(p)
        if a.shape != (end - start,) or a.dtype != np.float32:
            raise LQSError(f"{p}: expected {end - start} float32 scores, found {a.dtype} {a.shape}")
        parts.append(a)
    scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)  # none: an empty --shard
    save_npy(out / "scores.npy", scores)
    summary = {k: float(getattr(scores, k)()) if len(scores) else None for k in ("mean", "std", "min", "max")}
    return {"num_sequences": n, "part_size": part_size, **summary}
