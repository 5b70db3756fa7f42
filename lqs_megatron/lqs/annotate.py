"""``lqs annotate``: LQS (or PDS) scores of every proxy example, exactly as ``LQS_ALGORITHM.md`` says.

Phases: load and validate; forward pass (SGD replay, checkpoints every ``ceil(sqrt(T))``
steps, ``lqs/trajectory.py``); ``lambda_T``; backward sweep over the segments, last first:
recompute the segment's ``theta``, then for ``i`` down the segment score the proxy set if
``i % K == 0`` (``lqs/stats.py``, ``lqs/scores.py``) and step the costate
(``lqs/costate.py``), saving the state after every scoring step (``lqs/state.py``); write
``raw_scores.npy``, ``scores.npy`` and ``annotate.json`` (atomically, last).

Data parallelism: the proxy set is split contiguously over the data-parallel ranks for
scoring and gathered at every state save; train batches and the target set are split
and their gradients / HVPs all-reduced. Tensor parallelism: the model is sharded
(``models/parallelize.py``); statistics and inner products sum shards over the tp group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.scores import normalize_scores
from lqs_megatron.distributed import ParallelDims
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.config import AnnotateConfig
from lqs_megatron.lqs.costate import Costate
from lqs_megatron.lqs.derivatives import autocast
from lqs_megatron.lqs.examples import ExampleSet, micro_batches, rank_slice
from lqs_megatron.lqs.scores import score_update
from lqs_megatron.lqs.state import StateStore, SweepState
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.lqs.trajectory import Trajectory
from lqs_megatron.lqs.vectors import ParamSpace
from lqs_megatron.utils.atomic import save_json, save_npy

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bf16": torch.bfloat16}
OUTPUTS = ("raw_scores.npy", "scores.npy", "annotate.json")
# Test hook: kill this process (SIGKILL) right after the N-th scoring-step state save.
KILL_ENV = "LQS_TEST_KILL_AFTER_SCORING_STEPS"


class _Timer:
    """Seconds per phase (synchronising CUDA at the phase boundaries)."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals = dict(totals or {})

    @contextlib.contextmanager
    def __call__(self, phase: str):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - t


def _file_id(path: str | Path) -> list:
    p = Path(path)
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def _fingerprints(cfg: AnnotateConfig, dims: ParallelDims) -> tuple[str, str]:
    """``(trajectory, sweep)`` fingerprints: what must match for checkpoints / state to be reused.

    The data-parallel size is not part of them (a resumed run may use another number of ranks;
    its sums then differ only in rounding); the tensor-parallel size is (files are per shard).
    """
    model_files = sorted(
        _file_id(p) for p in Path(cfg.model).iterdir() if p.suffix in (".json", ".safetensors", ".bin")
    )
    traj = {
        "model": model_files,
        "train": _file_id(f"{cfg.train}.idx") + _file_id(f"{cfg.train}.bin"),
        **{k: getattr(cfg, k) for k in ("steps", "lr", "batch_size", "max_length", "micro_batch_size", "dtype")},
        "tp": dims.tp,
    }
    sweep = {
        "trajectory": traj,
        "target": _file_id(f"{cfg.target}.idx") + _file_id(f"{cfg.target}.bin"),
        "proxy": _file_id(f"{cfg.proxy}.idx") + _file_id(f"{cfg.proxy}.bin"),
        **{k: getattr(cfg, k) for k in ("interval", "method", "proxy_num", "proxy_batch_size", "backend")},
    }

    def h(x):
        return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:24]

    return h(traj), h(sweep)


def load_annotation_model(path: str, dims: ParallelDims, dtype: torch.dtype):
    """The HF model as our decoder, sharded for ``dims.tp``, on ``dims.device``, in ``dtype``."""
    from lqs_megatron.models.loading import load_model  # noqa: PLC0415

    return load_model(path, dims, dtype=dtype).train()


def _progress(total: int, desc: str, dims: ParallelDims):
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, disable=not (dims.is_main and sys.stderr.isatty()), leave=False)


def annotate(cfg: AnnotateConfig, dims: ParallelDims) -> dict:
    """Run the annotation; returns the ``annotate.json`` record (written on rank 0)."""
    torch.manual_seed(cfg.seed)
    timer = _Timer()
    out = Path(cfg.out)
    master_dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    compute_dtype = DTYPES[cfg.dtype]

    with timer("load"):
        for flag, prefix in (("--train", cfg.train), ("--target", cfg.target), ("--proxy", cfg.proxy)):
            if not (os.path.isfile(f"{prefix}.bin") and os.path.isfile(f"{prefix}.idx")):
                raise LQSError(f"{flag} {prefix}: no indexed dataset there (expected {prefix}.bin and {prefix}.idx)")
        model = load_annotation_model(cfg.model, dims, master_dtype)
        vocab = model.config.vocab_size
        train = ExampleSet(cfg.train, "--train", cfg.max_length)
        target = ExampleSet(cfg.target, "--target", cfg.max_length)
        proxy = ExampleSet(cfg.proxy, "--proxy", cfg.max_length, limit=cfg.proxy_num)
        if len(proxy) == 0:
            raise LQSError(f"--proxy {cfg.proxy}: the proxy set is empty (no examples to score)")
        train.validate(vocab, used=cfg.steps * cfg.batch_size)
        target.validate(vocab)
        proxy.validate(vocab)

    if dims.is_main:  # from here on the run replaces any previous outputs
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    traj_fp, sweep_fp = _fingerprints(cfg, dims)
    space = ParamSpace(model, dims)
    traj = Trajectory(
        space, train, cfg.steps, cfg.lr, cfg.batch_size, cfg.micro_batch_size, cfg.checkpoint_dir, traj_fp,
        master_dtype, compute_dtype,
    )  # fmt: skip
    costate = Costate(space, target, traj, cfg.micro_batch_size, master_dtype, compute_dtype)
    stats = ExampleStats(model, dims, cfg.backend)
    store = StateStore(out / "state", dims, sweep_fp)
    N = len(proxy)
    lo, hi = rank_slice(N, dims.dp, dims.dp_rank)
    proxy_plan = micro_batches(np.arange(lo, hi), proxy.lengths(), cfg.proxy_batch_size)
    log.info(
        "annotate: %s, T=%d K=%d eta=%g B=%d L=%d; %d proxy / %d target / %d train examples; world dp=%d tp=%d",
        cfg.method, cfg.steps, cfg.interval, cfg.lr, cfg.batch_size, cfg.max_length, N, len(target), len(train),
        dims.dp, dims.tp,
    )  # fmt: skip

    state = store.load(space, master_dtype) if cfg.resume else None
    if state is None:
        store.clear()
    else:
        timer.totals.update({k: v for k, v in state.timings.items() if k not in timer.totals})
        if dims.is_main:
            traj.read_train_losses()
        log.info("annotate: resuming the backward sweep at lambda_%d", state.step)

    # Forward pass (skipped when resuming a sweep: the checkpoints are then complete).
    if state is None:
        with timer("forward"), _progress(cfg.steps, "forward (SGD replay)", dims) as bar:
            traj.forward(resume=cfg.resume, progress=bar)
        with timer("load_checkpoint"):
            traj.load(cfg.steps)
        with timer("target_grad"):
            lam, value = costate.target_grad()
        state = SweepState(step=cfg.steps, lam=lam, s=np.zeros(N), c=np.ones(N), target_losses={cfg.steps: value})

    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    s_local, c_local = state.s[lo:hi].copy(), state.c[lo:hi].copy()
    lam = state.lam
    with _progress(state.step, "backward sweep", dims) as bar:
        for a, e in traj.segments():
            if a >= state.step:
                continue
            last = min(e, state.step) - 1
            with timer("recompute"):
                thetas = traj.recompute(a, last)
            for i in range(last, a - 1, -1):
                space.load_into_model(thetas[i - a])
                thetas[i - a] = None
                scoring = i % cfg.interval == 0
                if scoring:
                    with timer("scoring"):
                        lam_norm = space.norm(lam)
                        for idx in proxy_plan:
                            with autocast(dims.device, compute_dtype):
                                dot, sq = stats(proxy.batch(idx).to(dims.device), lam)
                            k = idx - lo
                            s_k, c_k = s_local[k], c_local[k]
                            score_update(s_k, c_k, dot.cpu().numpy(), sq.cpu().numpy(), lam_norm, cfg.lr, cfg.method)
                            s_local[k], c_local[k] = s_k, c_k
                with timer("target_grad"):
                    g_tgt, value = costate.target_grad()
                with timer("hvp"):
                    h = costate.hvp(i, lam)
                lam = costate.combine(lam, g_tgt, h)
                if not np.isfinite(value):
                    raise LQSError(f"target loss is {value} at step {i}: the trajectory diverged (lower --lr)")
                state.target_losses[i] = value
                state.step, state.lam = i, lam
                if scoring:
                    state.scoring_steps_done += 1
                    with timer("state_save"):
                        state.s, state.c = _gather(dims, s_local, c_local, lo, N)
                        state.timings = timer.totals
                        store.save(state)
                    log.info("annotate: scored step %d (L_tgt(theta_%d) = %.6f)", i, i, value)
                    if kill_after and state.scoring_steps_done >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                bar.update(1)

    raw, _ = _gather(dims, s_local, c_local, lo, N)
    if not np.all(np.isfinite(raw)):
        raise LQSError("non-finite raw scores: the trajectory or the costate diverged (lower --lr)")
    record = {
        "method": cfg.method,
        "arguments": dataclasses.asdict(cfg),
        "world": {"dp": dims.dp, "tp": dims.tp, "device": str(dims.device)},
        "num_proxy": N,
        "num_target": len(target),
        "num_train": len(train),
        "checkpoint_interval": traj.interval,
        "scoring_steps": [i for i in range(cfg.steps - 1, -1, -1) if i % cfg.interval == 0],
        "target_loss_curve": [{"step": i, "loss": state.target_losses[i]} for i in sorted(state.target_losses)],
        "train_loss_curve": [{"step": i, "loss": v} for i, v in sorted(traj.train_losses.items())],
        "raw_scores": {"mean": float(raw.mean()), "std": float(raw.std()), "min": float(raw.min()),
                       "max": float(raw.max())},
        "timings_s": {k: round(v, 4) for k, v in timer.totals.items()},
    }  # fmt: skip
    if dims.is_main:
        save_npy(out / "raw_scores.npy", raw.astype(np.float64))
        save_npy(out / "scores.npy", normalize_scores(raw))
        save_json(out / "annotate.json", record)
        if not cfg.keep_checkpoints:
            import shutil  # noqa: PLC0415

            shutil.rmtree(out / "state", ignore_errors=True)
            shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
    dims.barrier()
    return record


def _gather(dims: ParallelDims, s_local: np.ndarray, c_local: np.ndarray, lo: int, n: int):
    """Full-length ``s`` and ``c`` on every rank from each data-parallel rank's slice."""
    buf = torch.zeros(2, n, dtype=torch.float64, device=dims.device)
    buf[0, lo : lo + len(s_local)] = torch.from_numpy(s_local)
    buf[1, lo : lo + len(c_local)] = torch.from_numpy(c_local)
    dims.all_reduce(buf, group="dp")
    out = buf.cpu().numpy()
    return out[0].copy(), out[1].copy()
