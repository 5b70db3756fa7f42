"""The one training loop: ``lqs pretrain`` and ``lqs train-scorer`` are two uses of :class:`Trainer`.

A use builds its model, optimizer, schedule and loss module, wraps them in a
:class:`~lqs_megatron.training.step.TrainStep` (the one place where data parallelism,
micro-batching, autocast, clipping and the finite check happen) and provides three hooks:

- :meth:`Trainer.batch` — this rank's micro-batches of a step (the batch source: packed
  samples for pretraining, an epoch permutation for the scorer);
- :meth:`Trainer.after_step` — evaluation and checkpoints when due (pretraining: every
  ``--eval-interval`` / ``--save-interval`` steps; the scorer: at epoch ends, keeping the
  best epoch by validation Pearson);
- :meth:`Trainer.summary` — the result the command prints;
- :meth:`Trainer.save_now` — a checkpoint after the current step when the run is stopped by
  SIGTERM (a Slurm preemption or time limit): the signal is held during a step, every rank
  learns of it after the step, the checkpoint is written and the run ends as
  :class:`~lqs_megatron.errors.Terminated` (exit 143, the output lock released; ``--resume``
  continues from there). A second SIGTERM ends the run at once.

The loop itself owns what every run needs alike: the step counter from ``start_step``
(resume) to the end (or ``stop_after``), ``metrics.jsonl`` + TensorBoard + wandb + the loss
picture (:class:`~lqs_megatron.utils.progress.MetricsLog`), the progress bar, log lines with
throughput, and the policy for non-finite steps: stop with :class:`NonFiniteError` at the
first one, or skip up to ``skip_nonfinite`` of them (each logged). A non-finite step is
never applied to the weights (see :mod:`lqs_megatron.training.step`), so every checkpoint
written before it holds finite weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lqs_megatron.errors import LQSError, Terminated
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.step import StepResult, TrainStep
from lqs_megatron.utils.checkpoint_format import step_dir_name
from lqs_megatron.utils.progress import MetricsLog, Progress

logger = logging.getLogger(__name__)


class NonFiniteError(LQSError):
    """A training step's loss or gradient norm was NaN/Inf (more often than ``--skip-nonfinite`` allows)."""


@dataclass
class LoopSettings:
    """How the loop runs (the uses fill it from their configs)."""

    steps: int
    """Optimizer steps of the whole run (the schedule's length and the progress bar's total)."""
    log_interval: int = 10
    """Steps between log lines (and, without ``metrics_every_step``, between metrics records)."""
    stop_after: int | None = None
    """Stop after this step as if killed (tests of resume)."""
    skip_nonfinite: int = 0
    """Non-finite steps skipped (logged) before the run stops; 0: stop at the first."""
    metrics_every_step: bool = True
    """One metrics record per step (pretraining) or one per log interval with the mean loss (the scorer)."""
    desc: str = "train"
    """Name of the progress bar."""
    lr_hint: str = "lower --lr or lengthen the warm-up"
    """What the non-finite message suggests."""
    progress: bool = True
    """Show the progress bar (rank 0, on a terminal)."""
    tensorboard: bool = True
    """TensorBoard scalars under ``OUT/tb`` when tensorboard is installed."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (``--wandb``)."""
    run_config: dict = field(default_factory=dict)
    """The run's settings (stored in the wandb run)."""


@dataclass
class Batch:
    """One step's work on this rank: micro-batches (the loss module's arguments), their example count,
    and the tokens of the whole global batch (for tokens/s; None when not counted)."""

    micro_batches: list[tuple]
    n_local: int
    tokens: int | None = None


class Trainer:
    """The training loop; subclasses provide :meth:`batch`, :meth:`after_step` and :meth:`summary`."""

    def __init__(self, dims: ParallelDims, out: str | Path, step_fn: TrainStep, settings: LoopSettings, start: int):
        self.dims, self.out, self.step_fn, self.settings = dims, Path(out), step_fn, settings
        self.start_step = start
        self.metrics: MetricsLog | None = None
        self.last_saved: int | None = None
        self.last: StepResult | None = None
        self.skipped: list[int] = []

    # ---------------------------------------------------------------- hooks of a use

    def batch(self, step: int) -> Batch:
        """This rank's micro-batches of update ``step`` (0-based)."""
        raise NotImplementedError

    def record_fields(self, done: int) -> dict:
        """Extra fields of the metrics records of step ``done`` (e.g. the epoch)."""
        return {}

    def log_due(self, done: int) -> bool:
        """Whether step ``done`` gets a log line (and, without ``metrics_every_step``, a metrics record)."""
        s = self.settings
        return done % s.log_interval == 0 or done == s.steps or done == s.stop_after

    def after_step(self, done: int) -> None:
        """Evaluate and save when due, after update ``done`` (1-based) was applied or skipped."""

    def save_now(self, done: int) -> None:
        """Write a checkpoint after update ``done`` (collective), when SIGTERM stops the run; default: none."""

    def last_checkpoint(self) -> str | None:
        """Name of the newest checkpoint (``last_saved``, set by the use's save hook), for messages."""
        return step_dir_name(self.last_saved) if self.last_saved else None

    def summary(self, end: int) -> dict:
        return {"step": end, "loss": self.last.loss if self.last else None}

    # ---------------------------------------------------------------- the loop

    def run(self) -> dict:
        """Train from ``start_step`` to the end (or ``stop_after``); returns :meth:`summary`."""
        s, dims = self.settings, self.dims
        end = min(s.steps, s.stop_after) if s.stop_after else s.steps
        self.metrics = MetricsLog(
            self.out, self.start_step, dims.is_main, s.tensorboard, s.wandb_project, s.run_config, plot=True
        )
        progress = Progress(
            s.desc, dims.is_main and s.progress, log_every_s=None, unit="step", total=s.steps, initial=self.start_step
        )
        window = _Window()
        term = _HeldSigterm()
        try:
            for step in range(self.start_step, end):
                t0 = time.perf_counter()
                batch = self.batch(step)
                res = self.step_fn(batch.micro_batches, batch.n_local, step)
                done = step + 1
                window.add(res, time.perf_counter() - t0, batch.tokens)
                progress.update(1)
                if res.finite:
                    self.last = res
                    self._record(done, res, window, progress)
                else:
                    self._nonfinite(done, res)
                self.after_step(done)
                if term.requested(dims):
                    if getattr(self, "last_saved", None) != done:
                        self.save_now(done)
                    logger.warning("SIGTERM: stopped after step %d (checkpoint %s)", done, self.last_checkpoint())
                    raise Terminated()
        finally:
            term.close()
            progress.close()
            self.metrics.close()
        return self.summary(end)

    def _record(self, done: int, res: StepResult, window: _Window, progress: Progress) -> None:
        s = self.settings
        due = self.log_due(done)
        rec = {"step": done, **self.record_fields(done), "loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm}
        if due:
            mean_loss, tps = window.flush()
            if not s.metrics_every_step:
                rec["loss"] = mean_loss
            if tps is not None:
                rec["tokens_per_s"] = tps
            rate = f" | {tps:.0f} tok/s" if tps is not None else ""
            logger.info(
                "step %d/%d | loss %.4f | lr %.3g | grad norm %.3f%s | %s",
                done,
                s.steps,
                rec["loss"],
                res.lr,
                res.grad_norm,
                rate,
                progress.status(),
            )
            progress.set_postfix(f"loss {rec['loss']:.4f}" + (f", {tps:,.0f} tok/s" if tps is not None else ""))
        if s.metrics_every_step or due:
            self.metrics.write(rec)

    def _nonfinite(self, done: int, res: StepResult) -> None:
        s = self.settings
        self.skipped.append(done)
        self.metrics.write(
            {
                "step": done,
                **self.record_fields(done),
                "loss": res.loss,
                "lr": res.lr,
                "grad_norm": res.grad_norm,
                "nonfinite": True,
                "skipped": len(self.skipped) <= s.skip_nonfinite,
            }
        )
        bad = [n for n, v in (("loss", res.loss), ("gradient norm", res.grad_norm)) if not math.isfinite(v)]
        what = (
            f"step {done}: the {' and the '.join(bad)} is not finite "
            f"(loss {res.loss:.6g}, gradient norm {res.grad_norm:.6g}, learning rate {res.lr:.3g})"
        )
        if len(self.skipped) <= s.skip_nonfinite:
            logger.warning(
                "%s: batch skipped, weights unchanged (%d of --skip-nonfinite %d)",
                what,
                len(self.skipped),
                s.skip_nonfinite,
            )
            return
        ck = self.last_checkpoint()
        kept = f"the last checkpoint, {ck}, holds finite weights" if ck else "no checkpoint was written"
        allow = (
            f"{s.skip_nonfinite} non-finite batch(es) were skipped already (--skip-nonfinite {s.skip_nonfinite})"
            if s.skip_nonfinite
            else "--skip-nonfinite N skips up to N such batches"
        )
        raise NonFiniteError(f"{what}; stopped without applying this update ({kept}). Hint: {s.lr_hint}; {allow}")


class _HeldSigterm:
    """While the loop runs (main thread only): SIGTERM sets a flag instead of ending the step midway; a second
    one raises :class:`Terminated` at once. :meth:`requested` tells every rank whether any rank got it."""

    def __init__(self):
        self.flag = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        if self.flag:
            raise Terminated()
        self.flag = True

    def requested(self, dims: ParallelDims) -> bool:
        if not dims.distributed:
            return self.flag
        import torch

        t = torch.tensor([1.0 if self.flag else 0.0])
        return bool(dims.all_reduce(t, op="max").item())

    def close(self) -> None:
        if self.previous is not None:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


class _Window:
    """Losses, time and tokens since the last log line."""

    def __init__(self):
        self.losses: list[float] = []
        self.seconds = 0.0
        self.tokens: int | None = 0

    def add(self, res: StepResult, seconds: float, tokens: int | None) -> None:
        if res.finite:
            self.losses.append(res.loss)
        self.seconds += seconds
        self.tokens = None if tokens is None or self.tokens is None else self.tokens + tokens

    def flush(self) -> tuple[float, float | None]:
        """``(mean loss, tokens/s)`` of the window; starts a new one."""
        mean = sum(self.losses) / max(len(self.losses), 1)
        tps = None if self.tokens is None else self.tokens / max(self.seconds, 1e-9)
        self.losses, self.seconds, self.tokens = [], 0.0, 0
        return mean, tps
