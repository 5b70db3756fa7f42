"""``lqs annotate``: LQS (or PDS) scores of every proxy example, exactly as ``docs/algorithm.md`` says.

Phases: load and validate; with ``--lr auto`` the learning-rate probe (``lqs/lr_probe.py``);
forward pass (SGD replay, checkpoints every ``ceil(sqrt(T))`` steps, ``lqs/trajectory.py``);
``lambda_T``; the backward sweep (``lqs/sweep.py``, a generator that yields after every
scoring step; this driver saves the state (``lqs/state.py``) and runs the ``on_scoring``
hooks there); each example's own loss at ``theta_0``; the health verdict
(``lqs/health.py``); the outputs ``raw_scores.npy``, ``scores.npy``, ``example_loss.npy`` and
``annotate.json`` (each atomic; ``annotate.json`` is removed just before and written last, so
the previous run's files stay whole until the new ones are complete). ``--out`` is locked
for the run (``utils/lock.py``).

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
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.datasets.scores import normalize_scores
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.config import AnnotateConfig
from lqs_megatron.lqs.costate import Costate
from lqs_megatron.lqs.derivatives import example_losses
from lqs_megatron.lqs.examples import ExampleSet, micro_batches
from lqs_megatron.lqs.health import replay_health
from lqs_megatron.lqs.lr_probe import RULE, probe_learning_rate
from lqs_megatron.lqs.state import StateStore, SweepState
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.lqs.sweep import Sweep, backward_sweep, gather
from lqs_megatron.lqs.trajectory import Trajectory
from lqs_megatron.lqs.vectors import ParamSpace
from lqs_megatron.parallel.dims import ParallelDims, rank_slice
from lqs_megatron.training.step import autocast
from lqs_megatron.utils.atomic import save_json, save_npy
from lqs_megatron.utils.lock import output_lock
from lqs_megatron.utils.progress import MetricsLog, Progress

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bf16": torch.bfloat16}
OUTPUTS = ("raw_scores.npy", "scores.npy", "example_loss.npy", "annotate.json")
# Test hook: kill this process (SIGKILL) right after the N-th scoring-step state save.
KILL_ENV = "LQS_TEST_KILL_AFTER_SCORING_STEPS"


class PhaseTimer:
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


def _data_id(prefix: str) -> list:
    """:func:`_file_id` of a dataset's files: ``.idx`` and ``.bin``; a view's own files and its source's."""
    from lqs_megatron.data.datasets.view import open_dataset

    ds = open_dataset(prefix)
    return [x for p in [*ds.index_files, ds.data_path] for x in _file_id(p)]


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
        "train": _data_id(cfg.train),
        **{k: getattr(cfg, k) for k in ("steps", "lr", "max_length", "micro_batch_size", "dtype")},
        "batch_size": cfg.global_batch_size,  # the fingerprint's names of before the rename: old runs resume
        "tp": dims.tp,
    }
    sweep = {
        "trajectory": traj,
        "target": _data_id(cfg.target),
        "proxy": _data_id(cfg.proxy),
        **{k: getattr(cfg, k) for k in ("interval", "method", "proxy_num", "proxy_batch_size")},
        "backend": cfg.kernel_backend,
    }

    def h(x):
        return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:24]

    return h(traj), h(sweep)


#: the settings a --resume compares (OUT/state/settings.json): each enters the trajectory's, the sweep's or the
#: probe's fingerprint, so a change silently restarted that part before
RESUME_KEYS = tuple(
    "model train target proxy steps lr lr_grid lr_probe_steps global_batch_size interval max_length method "
    "micro_batch_size proxy_batch_size precision proxy_num ckpt_dir tp kernel_backend".split()
)


def _input_id(path: str, suffixes: tuple[str, ...]) -> str:
    """A dataset prefix or a model directory as ``PATH (N bytes, modified T)``: what a resume must find unchanged."""
    p = Path(path)
    if suffixes:
        files = [Path(f"{path}{s}") for s in suffixes]
    else:
        files = [f for f in p.iterdir() if f.suffix in (".json", ".safetensors", ".bin")]
    stats = [f.stat() for f in sorted(files) if f.exists()]
    newest = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(max((s.st_mtime for s in stats), default=0)))
    return f"{p.resolve()} ({sum(s.st_size for s in stats)} bytes, modified {newest} UTC)"


def _run_settings(cfg: AnnotateConfig) -> dict:
    from lqs_megatron.data.datasets.view import is_view

    out = {k: getattr(cfg, k) for k in RESUME_KEYS}
    out["model"] = _input_id(cfg.model, ())
    for k in ("train", "target", "proxy"):
        prefix = getattr(cfg, k)  # a view: its own files (its source is checked whenever it is opened)
        out[k] = _input_id(prefix, (".view.json", ".indices.npy") if is_view(prefix) else (".bin", ".idx"))
    return out


def _resume_settings(cfg: AnnotateConfig, dims: ParallelDims) -> list[dict]:
    """With --resume, the settings and inputs that differ from the killed run's (``utils/resume.py``): refused
    unless --allow-changed-settings (then returned, for annotate.json); saves this run's as OUT/state/settings.json."""
    from lqs_megatron.utils.resume import changed_settings, check_resume

    path = Path(cfg.out) / "state" / "settings.json"
    changes: list[dict] = []
    with dims.all_or_none():
        if dims.is_main:
            now = _run_settings(cfg)
            if cfg.resume and path.is_file():
                free = changed_settings(AnnotateConfig, json.loads(path.read_text()), now, RESUME_KEYS)
                allowed = "start the parts they invalidate afresh"
                allow = cfg.allow_changed_settings
                changes = check_resume(cfg.out, [], free, allow, "", "annotate.json", allowed=allowed)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_json(path, now)
    return dims.broadcast_object(changes)


def _probe_fingerprint(cfg: AnnotateConfig, dims: ParallelDims, steps: int, grid: list[float]) -> str:
    """What must match for a saved ``--lr auto`` probe to be reused."""
    key = {
        "model": sorted(_file_id(p) for p in Path(cfg.model).iterdir() if p.suffix in (".json", ".safetensors")),
        "train": _data_id(cfg.train),
        "target": _data_id(cfg.target),
        **{k: getattr(cfg, k) for k in ("max_length", "micro_batch_size", "dtype")},
        "batch_size": cfg.global_batch_size,
        "steps": steps,
        "grid": grid,
        "tp": dims.tp,
        "rule": RULE,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_annotation_model(path: str, dims: ParallelDims, dtype: torch.dtype):
    """The HF model as our decoder, sharded for ``dims.tp``, on ``dims.device``, in ``dtype``."""
    from lqs_megatron.models.loading import load_model

    return load_model(path, dims, dtype=dtype).train()


def _progress(total: int, desc: str, dims: ParallelDims) -> Progress:
    """Rank 0's bar of one phase (steps); the phase timings are logged by the caller."""
    return Progress(desc, enabled=dims.is_main, log_every_s=60.0, unit="step", total=total)


def fault_hooks_from_env() -> list[Callable[[SweepState], None]]:
    """The tests' fault injection: ``LQS_TEST_KILL_AFTER_SCORING_STEPS=N`` SIGKILLs the process right after
    the state save of the N-th scoring step (of this process's life)."""
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    if not kill_after:
        return []

    def kill(state: SweepState) -> None:
        if state.scoring_steps_done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    return [kill]


def annotate(
    cfg: AnnotateConfig, dims: ParallelDims, on_scoring: list[Callable[[SweepState], None]] | None = None
) -> dict:
    """Run the annotation; returns the ``annotate.json`` record (written on rank 0).

    ``on_scoring``: callables run after every scoring step's state save, with the saved state
    (``SweepState``: the step, the scores so far, the target-loss curve); the place for a
    metrics/TensorBoard writer, and for the tests' fault injection (:func:`fault_hooks_from_env`).
    """
    inputs = {"--model": cfg.model, "--train": cfg.train, "--target": cfg.target, "--proxy": cfg.proxy}
    with output_lock(cfg.out, enabled=dims.is_main, step="annotate", inputs=inputs, kind="dir"):
        return _annotate(cfg, dims, list(on_scoring or []))


def _load_sets(cfg: AnnotateConfig, dims: ParallelDims, master_dtype: torch.dtype):
    from lqs_megatron.data.datasets.view import data_exists

    for flag, prefix in (("--train", cfg.train), ("--target", cfg.target), ("--proxy", cfg.proxy)):
        if not data_exists(prefix):
            raise LQSError(
                f"{flag} {prefix}: no indexed dataset there (expected {prefix}.bin and {prefix}.idx, or a view "
                f"{prefix}.view.json)"
            )
    from lqs_megatron.data.tokenizers.fingerprint import check_data_tokenizer, model_tokenizer

    sets = {f"--train {cfg.train}": cfg.train, f"--target {cfg.target}": cfg.target, f"--proxy {cfg.proxy}": cfg.proxy}
    check_data_tokenizer(sets, model_tokenizer(cfg.model), f"--model {cfg.model}", cfg.allow_tokenizer_mismatch)
    model = load_annotation_model(cfg.model, dims, master_dtype)
    model.config.check_max_length(cfg.max_length, f"--model {cfg.model!r}")
    vocab = model.config.vocab_size
    train = ExampleSet(cfg.train, "--train", cfg.max_length)
    target = ExampleSet(cfg.target, "--target", cfg.max_length)
    proxy = ExampleSet(cfg.proxy, "--proxy", cfg.max_length, limit=cfg.proxy_num)
    if len(proxy) == 0:
        raise LQSError(f"--proxy {cfg.proxy}: the proxy set is empty (no examples to score)")
    train.validate(vocab, used=cfg.steps * cfg.global_batch_size)
    target.validate(vocab)
    proxy.validate(vocab)
    return model, train, target, proxy


def _choose_lr(cfg: AnnotateConfig, dims, space, train, target, master_dtype, compute_dtype):
    """``(cfg with a numeric lr, probe record or None)``: runs the ``--lr auto`` probe (reused on --resume)."""
    if cfg.lr != "auto":
        return cfg, None
    steps = min(cfg.steps, cfg.lr_probe_steps)
    grid = list(cfg.lr_grid)
    key = _probe_fingerprint(cfg, dims, steps, grid)
    path = Path(cfg.out) / "state" / "lr_probe.json"
    saved = None
    if cfg.resume and dims.is_main and path.is_file():
        saved = json.loads(path.read_text())
        saved = saved if saved.get("fingerprint") == key else None
    saved = dims.broadcast_object(saved)
    if saved is not None:
        logger.info("annotate: --lr auto: reusing the probe of the interrupted run (eta=%g)", saved["chosen"])
        probe = saved["probe"]
    else:
        traj = Trajectory(
            space=space,
            train=train,
            steps=steps,
            lr=1.0,
            batch_size=cfg.global_batch_size,
            micro_batch_size=cfg.micro_batch_size,
            ckpt_dir=cfg.checkpoint_dir,
            fingerprint="",
            master_dtype=master_dtype,
            compute_dtype=compute_dtype,
        )
        costate = Costate(space, target, traj, cfg.micro_batch_size, master_dtype, compute_dtype)
        probe = probe_learning_rate(traj, costate, grid, steps).to_dict()
        if dims.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_json(path, {"fingerprint": key, "chosen": probe["chosen"], "probe": probe})
    return dataclasses.replace(cfg, lr=float(probe["chosen"])), probe


def _annotate(cfg: AnnotateConfig, dims: ParallelDims, on_scoring: list[Callable[[SweepState], None]]) -> dict:
    torch.manual_seed(cfg.seed)
    timer = PhaseTimer()
    out = Path(cfg.out)
    master_dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    compute_dtype = DTYPES[cfg.dtype]

    with timer("load"):
        model, train, target, proxy = _load_sets(cfg, dims, master_dtype)
    if dims.is_main:  # the old outputs stay until the new ones are complete (written last, annotate.json last)
        out.mkdir(parents=True, exist_ok=True)
    resume_changes = _resume_settings(cfg, dims)
    space = ParamSpace(model, dims)
    with timer("lr_probe"):
        cfg, probe = _choose_lr(cfg, dims, space, train, target, master_dtype, compute_dtype)
    if probe is None:
        timer.totals.pop("lr_probe")
    traj_fp, sweep_fp = _fingerprints(cfg, dims)
    traj = Trajectory(
        space=space,
        train=train,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.global_batch_size,
        micro_batch_size=cfg.micro_batch_size,
        ckpt_dir=cfg.checkpoint_dir,
        fingerprint=traj_fp,
        master_dtype=master_dtype,
        compute_dtype=compute_dtype,
    )
    costate = Costate(space, target, traj, cfg.micro_batch_size, master_dtype, compute_dtype)
    store = StateStore(out / "state", dims, sweep_fp)
    N = len(proxy)
    lo, hi = rank_slice(N, dims.dp, dims.dp_rank)
    sweep = Sweep(
        space=space,
        trajectory=traj,
        costate=costate,
        stats=ExampleStats(model, dims, cfg.kernel_backend),
        proxy=proxy,
        proxy_plan=micro_batches(np.arange(lo, hi), proxy.lengths(), cfg.proxy_batch_size),
        lo=lo,
        hi=hi,
        interval=cfg.interval,
        method=cfg.method,
        compute_dtype=compute_dtype,
    )
    logger.info(
        "annotate: %s, T=%d K=%d eta=%g B=%d L=%d; %d proxy / %d target / %d train examples; world dp=%d tp=%d",
        cfg.method,
        cfg.steps,
        cfg.interval,
        cfg.lr,
        cfg.global_batch_size,
        cfg.max_length,
        N,
        len(target),
        len(train),
        dims.dp,
        dims.tp,
    )

    state = _initial_state(cfg, dims, store, traj, costate, timer, N)
    with _progress(state.step, "backward sweep", dims) as bar:
        for st in backward_sweep(sweep, state, timer, bar):
            with timer("state_save"):
                st.timings = timer.totals
                store.save(st)
            logger.info(
                "annotate: scored step %d (L_tgt(theta_%d) = %.6f)", st.step, st.step, st.target_losses[st.step]
            )
            for hook in on_scoring:
                hook(st)

    raw = state.s
    if not np.all(np.isfinite(raw)):
        raise LQSError("non-finite raw scores: the trajectory or the costate diverged (lower --lr)")
    with timer("own_loss"):
        traj.load(0)
        own = _own_losses(sweep, N)
    record = _record(cfg, dims, traj, proxy, target, train, state, raw, own, probe, model.config.vocab_size)
    record["timings_s"] = {k: round(v, 4) for k, v in timer.totals.items()}
    if resume_changes:
        record["resume_changes"] = resume_changes
    for w in record["health"]["warnings"]:
        logger.warning("annotate: %s", w["message"])
    if dims.is_main:
        _write_outputs(out, raw, own, record)
        _write_metrics(out, record)
        if not cfg.keep_checkpoints:
            shutil.rmtree(out / "state", ignore_errors=True)
            shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
    dims.barrier()
    return record


def _initial_state(cfg, dims, store: StateStore, traj: Trajectory, costate: Costate, timer, n: int) -> SweepState:
    """The saved sweep state with ``--resume``; else the forward pass and ``lambda_T`` (a fresh sweep)."""
    state = store.load(traj.space, traj.master_dtype) if cfg.resume else None
    if state is not None:
        timer.totals.update({k: v for k, v in state.timings.items() if k not in timer.totals})
        if dims.is_main:
            traj.read_train_losses()
        logger.info("annotate: resuming the backward sweep at lambda_%d", state.step)
        return state
    store.clear()
    with timer("forward"), _progress(cfg.steps, "forward (SGD replay)", dims) as bar:
        traj.forward(resume=cfg.resume, progress=bar)  # continues its own checkpoints when resuming
    with timer("load_checkpoint"):
        traj.load(cfg.steps)
    with timer("target_grad"):
        lam, value = costate.target_grad()
    return SweepState(step=cfg.steps, lam=lam, s=np.zeros(n), c=np.ones(n), target_losses={cfg.steps: value})


@torch.no_grad()
def _own_losses(sw: Sweep, n: int) -> np.ndarray:
    """Each proxy example's own loss ``l(x; theta)`` at the model's parameters (gathered over dp)."""
    local = np.zeros(sw.hi - sw.lo)
    dev = sw.dims.device
    for idx in sw.proxy_plan:
        with autocast(dev, sw.compute_dtype):
            losses = example_losses(sw.space.model, sw.proxy.batch(idx).to(dev))
        local[idx - sw.lo] = losses.double().cpu().numpy()
    return gather(sw.dims, [local], sw.lo, n)[0]


def _record(cfg, dims, traj, proxy, target, train, state, raw, own, probe, vocab_size) -> dict:
    health = replay_health(
        state.target_losses,
        traj.train_losses,
        raw,
        proxy.lengths(),
        own,
        state.cos_stats,
        vocab_size=vocab_size,
        probe=probe,
    )
    if probe is not None and not probe["passed"]:
        health["warnings"].insert(
            0,
            {
                "kind": "lr_probe_failed",
                "replay": True,
                "message": f"--lr auto: the probe's target loss did not fall even at the smallest rate of the grid "
                f"({probe['grid'][0]:g}, used): the replay's data may not lead towards the target",
            },
        )
        health["ok"] = False
    record = {
        "method": cfg.method,
        "arguments": dataclasses.asdict(cfg),
        "world": {"dp": dims.dp, "tp": dims.tp, "device": str(dims.device)},
        "num_proxy": len(proxy),
        "num_target": len(target),
        "num_train": len(train),
        "checkpoint_interval": traj.interval,
        "scoring_steps": [i for i in range(cfg.steps - 1, -1, -1) if i % cfg.interval == 0],
        "target_loss_curve": [{"step": i, "loss": state.target_losses[i]} for i in sorted(state.target_losses)],
        "train_loss_curve": [{"step": i, "loss": v} for i, v in sorted(traj.train_losses.items())],
        "cos_stats": [{"step": i, **state.cos_stats[i]} for i in sorted(state.cos_stats)],
        "raw_scores": {
            "mean": float(raw.mean()),
            "std": float(raw.std()),
            "min": float(raw.min()),
            "max": float(raw.max()),
        },
        "health": health,
    }
    if probe is not None:
        record["lr_probe"] = probe
    return record


def _write_metrics(out: Path, record: dict) -> None:
    """The replay's curves as ``OUT/metrics.jsonl`` (one record per step: ``annotate/train_loss`` of the SGD
    step, ``annotate/target_loss`` of theta_i, ``annotate/cos_*`` of a scoring step), TensorBoard scalars
    under ``OUT/tb`` when installed and ``OUT/loss.png`` (utils/progress.py), the phase timings last: the
    numbers of ``annotate.json``, for the tools that read training runs."""
    steps: dict[int, dict] = {}
    for row in record["train_loss_curve"]:
        steps.setdefault(row["step"], {})["annotate/train_loss"] = row["loss"]
    for row in record["target_loss_curve"]:
        steps.setdefault(row["step"], {})["annotate/target_loss"] = row["loss"]
    for row in record["cos_stats"]:
        steps.setdefault(row["step"], {}).update({f"annotate/cos_{k}": v for k, v in row.items() if k != "step"})
    timings = {f"annotate/time_{k}_s": v for k, v in record["timings_s"].items()}
    with MetricsLog(out) as metrics:
        for i in sorted(steps):
            metrics.write({"step": i, **steps[i]})
        metrics.write({"step": max(steps, default=0), **timings})


def _write_outputs(out: Path, raw: np.ndarray, own: np.ndarray, record: dict) -> None:
    """Replace the outputs: ``annotate.json`` (the marker of a finished run) goes first and comes back last."""
    (out / "annotate.json").unlink(missing_ok=True)
    save_npy(out / "raw_scores.npy", raw.astype(np.float64))
    save_npy(out / "scores.npy", normalize_scores(raw))
    save_npy(out / "example_loss.npy", own.astype(np.float64))
    save_json(out / "annotate.json", record)
