"""Scorer training (``lqs train-scorer``): the scorer's use of the one training loop.

:class:`ScorerTrainer` is a :class:`~lqs_megatron.training.loop.Trainer` (the loop, data
parallelism, clipping, metrics, progress, the non-finite policy and the checkpoint writer
are the pretraining ones) with the scorer's pieces:

- loss: the squared error of each sequence's score against its normalised target
  (:class:`ScorerLoss`); the step minimises their mean over the global batch, bf16
  autocast on CUDA, float32 head and loss;
- batch source: epoch ``e`` visits the training split in the seeded permutation
  ``default_rng([seed, e])``; batch ``s`` is ``perm[s*B : (s+1)*B]`` (the last partial batch
  of an epoch is dropped, a different one each epoch). Each data-parallel rank takes a
  contiguous ``1/dp`` of the batch, sorts it by length and cuts it into
  ``batch_size / (dp * micro_batch_size)`` micro-batches: the gradient of the whole batch is
  the same however it is cut, and micro-batches of similar lengths waste little padding;
- AdamW (no weight decay on biases and norm weights), linear warmup then cosine to
  ``min_lr``, gradient clipping by global norm;
- hooks: after every epoch, predictions on the valid split (the length-bucketed path of
  ``lqs score``, split across ranks), MSE, Pearson and Spearman against the targets. The
  best epoch **by validation Pearson** is kept in ``OUT/best`` (Pearson ignores an affine
  rescaling of the predictions, as top-k selection and ordering do; MSE would prefer a
  well-calibrated but worse-ranking model). A checkpoint (``OUT/step_X``, the pretraining
  layout: ``latest``, checksums, atomic, ``--keep-last``) every ``save_interval`` steps and at
  each epoch end holds the model, the optimizer, the position and the RNG: ``--resume``
  continues from it exactly where it stopped.

Batch size: ``--global-batch-size``; by default 512 (PDS/DELT), lowered to a power of
two that gives an epoch at least :data:`MIN_STEPS_PER_EPOCH` steps on a small split.

Layout::

    OUT/best/          scorer.json (meta: epoch, metrics, arguments), model.safetensors, tokenizer/, checksums.json
    OUT/step_XXXXXXXX/ the same files + optimizer.pt, trainer.json, rng.pt
    OUT/latest         the newest complete step directory's name
    OUT/metrics.jsonl, OUT/loss.png, OUT/tb/   training loss per log interval, validation per epoch

A run written before this layout (``OUT/last/``) resumes from ``OUT/last``; its new
checkpoints go to step directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lqs_megatron.data.datasets.scores import flat_scores, flat_scores_message
from lqs_megatron.data.tokenizers.fingerprint import check_same_tokenizer
from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims, rank_slice
from lqs_megatron.scorer.config import MIN_STEPS_PER_EPOCH, TrainScorerConfig, TrainScorerRun
from lqs_megatron.scorer.data import load_split, load_stats
from lqs_megatron.scorer.metrics import regression_metrics
from lqs_megatron.scorer.model import Scorer, ScorerConfig, build_scorer, load_scorer, save_scorer, unwrap
from lqs_megatron.scorer.predict import collate, predict
from lqs_megatron.training.checkpoint import (
    find_resume_dir,
    remove_leftovers,
    rng_state,
    save_step,
    set_rng_state,
)
from lqs_megatron.training.loop import Batch, LoopSettings, Trainer
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.step import TrainStep
from lqs_megatron.utils.atomic import atomic_dir
from lqs_megatron.utils.checkpoint_format import validate_step_dir
from lqs_megatron.utils.integrity import (
    check_finite,
    digest_files,
    disk_errors,
    files_under,
    torch_load,
    write_manifest,
)
from lqs_megatron.utils.lock import output_lock_on_main
from lqs_megatron.utils.resume import changed_settings, check_resume

logger = logging.getLogger(__name__)

LEGACY_LAST = "last"


def schedule(cfg: TrainScorerConfig, total_steps: int) -> WarmupCosine:
    """Linear warmup over ``cfg.warmup_steps`` steps to ``cfg.lr``, then cosine down to ``cfg.min_lr`` at the last
    step."""
    return WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup_steps, total_steps)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def micro_batches(batch: np.ndarray, lengths: np.ndarray, dims, accum: int) -> list[np.ndarray]:
    """This rank's contiguous share of a global batch, sorted by length, cut into ``accum`` micro-batches."""
    lo, hi = rank_slice(len(batch), dims.dp, dims.dp_rank)
    part = batch[lo:hi]
    part = part[np.argsort(-lengths[part], kind="stable")]
    return np.array_split(part, accum)


class ScorerLoss(nn.Module):
    """The scorer with its loss in ``forward`` (what the train step wraps): ``-> [B]`` squared errors (float32)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.scorer(input_ids, lengths).float() - target.float()) ** 2


def evaluate(
    model: Scorer, cfg: ScorerConfig, split, dims, max_tokens: int | None, autocast: torch.dtype | None = None
) -> dict[str, float]:
    """Valid-split metrics; every rank predicts a contiguous share, rank order restores the split order."""
    lo, hi = rank_slice(len(split.data), dims.dp, dims.dp_rank)
    was_training = model.training
    model.eval()
    pred = predict(model, cfg, split.data, np.arange(lo, hi), dims.device, max_tokens=max_tokens, autocast=autocast)
    model.train(was_training)
    full = np.concatenate(dims.all_gather_object(pred))
    return regression_metrics(full, split.scores)


def _validate_scorer_step(d: Path, crc: bool = True) -> dict:
    """A scorer checkpoint directory is usable for --resume: every file checks out; returns trainer.json."""
    return validate_step_dir(d, crc, required=("scorer.json", "trainer.json", "model.safetensors", "optimizer.pt"))


def _resume_source(out: Path, resume: bool, dims) -> Path | None:
    """The checkpoint to continue from (rank 0 chooses, every rank is told), or None for a fresh run."""
    legacy = out / LEGACY_LAST
    has_run = (out / "latest").is_file() or (legacy / "trainer.json").is_file()
    if has_run and not resume:
        raise LQSError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if not has_run:
        return None
    choice = None
    with dims.all_or_none():
        if dims.is_main:
            if (out / "latest").is_file():
                d, skipped = find_resume_dir(out, validate=_validate_scorer_step)
                for line in skipped:
                    logger.warning("--resume: skipping %s", line)
            else:  # written before step directories: OUT/last
                _validate_scorer_step(legacy)
                d = legacy
            choice = str(d)
    return Path(dims.broadcast_object(choice))


def _resume_changes(src: Path, saved: dict, cfg: TrainScorerConfig, source: str, allow: bool, warn: bool) -> list:
    """The settings that differ from the run's (``utils/resume.py``): the data order, the sequences and the
    backbone are refused; the optimisation unless ``allow`` (then the changes are returned, to be recorded)."""
    renamed = {"batch_size": "global_batch_size", "warmup": "warmup_steps"}  # as recorded before the rename
    now = dataclasses.asdict(cfg)
    args = {renamed.get(k, k): v for k, v in saved.get("args", {}).items()}
    fixed = changed_settings(TrainScorerConfig, args, now, ("global_batch_size", "seed", "max_length", "use_bos"))
    if saved.get("source") not in (None, source):
        fixed.append({"setting": "--base/--model-config", "was": saved["source"], "now": source})
    keys = ("epochs", "lr", "min_lr", "weight_decay", "warmup_steps", "clip_grad", "precision")
    free = changed_settings(TrainScorerConfig, args, now, keys)
    why = "the data order or the model would change"
    return check_resume(str(src), fixed, free, allow, why, "trainer.json", warn)


class ScorerTrainer(Trainer):
    """One scorer training run on this rank: the scorer's pieces around the one loop."""

    def __init__(self, run: TrainScorerRun, cfg: TrainScorerConfig, dims: ParallelDims, progress: bool = True):
        out = Path(run.out)
        self.train, self.valid = load_split(run.data, "train"), load_split(run.data, "valid")
        flat = load_stats(run.data).get("scores_flat") or flat_scores(self.train.scores)
        if flat:
            logger.warning(flat_scores_message(run.data, flat))
        cfg = cfg.resolved(len(self.train.data), dims.dp)
        self.cfg, self.accum = cfg, cfg.accumulation(dims.dp)
        self.steps_per_epoch = len(self.train.data) // cfg.global_batch_size
        if self.steps_per_epoch < MIN_STEPS_PER_EPOCH:
            logger.warning(
                "an epoch is only %d optimizer step(s) (%d training sequences, --global-batch-size %d): the warm-up "
                "and the per-epoch validation see very few updates; lower --global-batch-size or add data",
                self.steps_per_epoch,
                len(self.train.data),
                cfg.global_batch_size,
            )
        total = self.steps_per_epoch * cfg.epochs
        src = _resume_source(out, run.resume, dims)
        self.state = {"best": None, "history": []}
        if src is not None:
            model, self.scfg, _ = load_scorer(src)
            self.tok_dir = str(src / "tokenizer")
            self.state = json.loads((src / "trainer.json").read_text())
            source = os.path.abspath(run.base) if run.base is not None else f"config:{run.model_config}"
            changed = _resume_changes(src, self.scfg.meta, cfg, source, run.allow_changed_settings, dims.is_main)
            step = int(self.state.get("global_step", 0))
            self.state["resume_changes"] = self.state.get("resume_changes", []) + [{"step": step, **c} for c in changed]
            logger.info("resuming from %s at epoch %d, step %d", src, self.state["epoch"], self.state["step_in_epoch"])
        else:
            model, self.scfg, self.tok_dir = build_scorer(
                run.base, run.model_config, run.tokenizer, cfg.max_length, cfg.seed, cfg.use_bos
            )
        check_same_tokenizer(
            self.scfg.tokenizer,
            load_stats(run.data).get("tokenizer"),
            f"scorer data {str(run.data)!r}",
            "the scorer",
            hint=" (prepare-scorer-data records it from --src/--dst-tokenizer or PREFIX.stats.json)",
            allow=run.allow_tokenizer_mismatch,
        )
        self.model = model.to(dims.device).train()
        # torch's AdamW defaults (PDS/DELT's scorer optimizer), through the shared builder
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
        if src is not None:
            self.optimizer.load_state_dict(torch_load(src / "optimizer.pt", map_location=dims.device))
            set_rng_state(torch_load(src / "rng.pt"))
        self.amp = torch.bfloat16 if dims.device.type == "cuda" and cfg.bf16 else None
        step_fn = TrainStep(
            ScorerLoss(self.model),
            dims,
            self.optimizer,
            schedule(cfg, total),
            cfg.clip_grad,
            self.amp,
            find_unused_parameters=self.scfg.backbone == "hf",  # an HF base model may hold parameters it never uses
        )
        self.run_meta = {"args": dataclasses.asdict(cfg), "data": str(run.data), "source": self.scfg.source}
        settings = LoopSettings(
            steps=total,
            log_interval=cfg.log_interval,
            skip_nonfinite=cfg.skip_nonfinite,
            metrics_every_step=False,
            desc="train-scorer",
            lr_hint=f"lower --lr (peak {cfg.lr:g}) or lengthen --warmup-steps (now {cfg.warmup_steps})",
            progress=progress,
            tensorboard=cfg.tensorboard,
            wandb_project=cfg.wandb,
            run_config=self.run_meta,
        )
        start = int(self.state.get("global_step", 0))
        super().__init__(dims, out, step_fn, settings, start)
        self.last_saved = start if src is not None else None
        self.skipped = list(self.state.get("skipped_nonfinite", []))
        self.train_lengths = self.scfg.effective_lengths(self.train.data.sequence_lengths)
        self._order: tuple[int, np.ndarray] | None = None

    # ---------------------------------------------------------------- the loop's hooks

    def batch(self, step: int) -> Batch:
        epoch, s = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.train.data), self.cfg.seed, epoch))
        B = self.cfg.global_batch_size
        batch = self._order[1][s * B : (s + 1) * B]
        dev = self.dims.device
        mbs = []
        for mb in micro_batches(batch, self.train_lengths, self.dims, self.accum):
            ids, lens = collate(self.train.data, mb, self.scfg)
            target = torch.from_numpy(self.train.scores[mb])
            mbs.append((torch.from_numpy(ids).to(dev), torch.from_numpy(lens).to(dev), target.to(dev)))
        return Batch(mbs, sum(len(m[0]) for m in mbs), int(self.train_lengths[batch].sum()))

    def record_fields(self, done: int) -> dict:
        return {"epoch": (done - 1) // self.steps_per_epoch}

    def log_due(self, done: int) -> bool:
        return super().log_due(done) or done % self.steps_per_epoch == 0  # every epoch's last loss too

    def position(self, done: int) -> dict:
        """``trainer.json`` after update ``done``."""
        epoch, s = divmod(done, self.steps_per_epoch)
        pos = {"epoch": epoch, "step_in_epoch": s, "global_step": done, "skipped_nonfinite": self.skipped}
        return {**self.state, **pos}

    def after_step(self, done: int) -> None:
        if done % self.steps_per_epoch == 0:
            self.end_epoch(done)
            self.save(done)
        elif self.cfg.save_interval and done % self.cfg.save_interval == 0:
            self.save(done)

    def end_epoch(self, done: int) -> None:
        epoch = done // self.steps_per_epoch
        m = evaluate(unwrap(self.model), self.scfg, self.valid, self.dims, self.cfg.eval_batch_tokens, self.amp)
        record = {"epoch": epoch, "step": done, **{f"valid_{k}": v for k, v in m.items()}}
        self.state["history"].append(record)
        self.metrics.write(record)
        logger.info(
            "epoch %d/%d: valid MSE %.4f, Pearson %.4f, Spearman %.4f",
            epoch,
            self.cfg.epochs,
            m["mse"],
            m["pearson"],
            m["spearman"],
        )
        if self.state["best"] is None or m["pearson"] > self.state["best"]["valid_pearson"]:
            self.state["best"] = record
            self._write_best(record)

    def _write_best(self, record: dict) -> None:
        with self.dims.all_or_none(), disk_errors(self.out, "OUT/best"):
            if self.dims.is_main:
                scfg = dataclasses.replace(self.scfg, meta={**self.run_meta, "best": record, "selected_by": "pearson"})
                with atomic_dir(self.out / "best") as tmp:
                    self._write_scorer(tmp, scfg)
                    write_manifest(tmp, digest_files(tmp, files_under(tmp)))

    def _write_scorer(self, tmp: Path, scfg: ScorerConfig) -> None:
        check_finite(unwrap(self.model).state_dict(), f"refusing to write {tmp.name}")
        save_scorer(self.model, scfg, self.tok_dir, tmp)

    def save_now(self, done: int) -> None:
        self.save(done)

    def save(self, done: int) -> Path:
        state = self.position(done)

        def write(tmp: Path) -> list[str]:
            if not self.dims.is_main:  # the model is replicated: rank 0 writes everything
                return []
            self._write_scorer(tmp, dataclasses.replace(self.scfg, meta={**self.run_meta, "trainer": state}))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "trainer.json").write_text(json.dumps(state, indent=2) + "\n")
            return files_under(tmp)

        path = save_step(self.out, done, self.dims, write, self.cfg.keep_last)
        self.last_saved = done
        return path

    def summary(self, end: int) -> dict:
        best = self.state["best"]
        return {
            "out": str(self.out / "best"),
            "best_epoch": best["epoch"] if best else None,
            "best_valid": {k: best[f"valid_{k}"] for k in ("mse", "pearson", "spearman")} if best else None,
            "steps": end,
            "global_batch_size": self.cfg.global_batch_size,
            "skipped_nonfinite": self.skipped,
        }


def train_scorer(run: TrainScorerRun, cfg: TrainScorerConfig | None = None, dims=None, progress: bool = True) -> dict:
    """Train a scorer on ``run.data`` (``lqs prepare-scorer-data`` output) into ``run.out``, holding its lock."""
    cfg = cfg or TrainScorerConfig()
    dims = dims or ParallelDims(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.time()
    inputs = {"--data": run.data, "--base": run.base, "--tokenizer": run.tokenizer}
    with output_lock_on_main(run.out, dims, step="train-scorer", inputs=inputs, kind="dir"):
        if dims.is_main:
            remove_leftovers(run.out)
        result = ScorerTrainer(run, cfg, dims, progress).run()
    return {**result, "seconds": round(time.time() - t0, 3)}
