"""``lqs pretrain``: build (model, data, optimizer) → resume → the one loop (step, log, eval, save) → close.

The driver is :func:`pretrain` (it takes the output lock); :class:`Pretrainer` is the
pretraining use of :class:`~lqs_megatron.training.loop.Trainer` (batch source: packed
samples; hooks: validation loss and checkpoints) and holds the pieces so tests and
benchmarks can reach them. Exact resume: the sample stream is a pure function of the
settings and the step (``consumed_samples = step * global_batch_size``), the schedule a pure
function of the step, and the model, optimizer and RNG states come back from the
checkpoint, so a resumed run's losses equal an uninterrupted run's step for step.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.datasets.sample_index import samples_available
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.loading import build_model, load_model
from lqs_megatron.models.parallelize import check_tp
from lqs_megatron.parallel.dims import ParallelDims, rank_slice
from lqs_megatron.training.checkpoint import load_training_state, remove_leftovers, save_checkpoint
from lqs_megatron.training.config import (
    PACKED_EVAL_SAMPLES,
    EvaluateConfig,
    PretrainConfig,
    choose_resume_dir,
    resume_changes,
)
from lqs_megatron.training.data import PackedSamples, SampleStream, check_token_ids
from lqs_megatron.training.evaluate import evaluate_dataset
from lqs_megatron.training.loop import Batch, LoopSettings, Trainer
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.step import TrainStep, autocast_dtype
from lqs_megatron.utils.checkpoint_format import step_dir_name
from lqs_megatron.utils.lock import output_lock_on_main

logger = logging.getLogger(__name__)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def resolve_model_config(cfg: PretrainConfig):
    """``(ModelConfig, tokenizer or None)`` of the run, validated against ``--tp`` (no process group needed)."""
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer, vocab_size

    tok_dir = cfg.tokenizer
    if cfg.init_from is not None:
        from lqs_megatron.models.hf import config_from_hf, read_hf_config

        mc = config_from_hf(read_hf_config(cfg.init_from), where=f"{cfg.init_from}/config.json")
        if tok_dir is None and any((Path(cfg.init_from) / f).is_file() for f in _TOKENIZER_FILES):
            tok_dir = cfg.init_from
        where = cfg.init_from
    else:
        mc = load_model_config(cfg.model_config)
        where = f"model config {cfg.model_config!r}"
    tok = load_tokenizer(tok_dir, require_eos=False) if tok_dir is not None else None
    if tok is not None:
        n = vocab_size(tok)
        if cfg.init_from is not None:
            if n > mc.vocab_size:
                raise LQSError(f"tokenizer {tok_dir} has {n} ids, more than the vocabulary {mc.vocab_size} of {where}")
        else:
            mc.vocab_size = n
            mc.bos_token_id, mc.eos_token_id, mc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if mc.vocab_size < 1:
        raise LQSError(f"--tokenizer is required with --model-config ({where} sets no vocabulary)")
    mc.check_max_length(cfg.max_length, where)
    check_tp(mc, cfg.tp, name=where)
    return mc, tok


def run_tokenizer(cfg: PretrainConfig, tok) -> dict | None:
    """The tokenizer identity of the run (``--tokenizer``'s, or ``--init-from``'s), checked against every
    dataset's (``--allow-tokenizer-mismatch`` makes a mismatch a warning); when the model side records
    none, the data's: what the checkpoints record (``config.json``'s ``tokenizer``)."""
    from lqs_megatron.data.tokenizers.fingerprint import (
        check_data_tokenizer,
        dataset_tokenizer,
        identity,
        model_tokenizer,
    )

    if tok is not None:
        model_tok, name = identity(tok, tok.name_or_path), f"tokenizer {tok.name_or_path}"
    else:
        model_tok = model_tokenizer(cfg.init_from) if cfg.init_from is not None else None
        name = f"--init-from {cfg.init_from}"
    sets = {f"--data {p}": p for p in cfg.data}
    if cfg.valid_data:
        sets[f"--valid-data {cfg.valid_data}"] = cfg.valid_data
    if cfg.target:  # online selection's target batches meet the model too
        sets[f"--target {cfg.target}"] = cfg.target
    check_data_tokenizer(sets, model_tok, name, cfg.allow_tokenizer_mismatch)
    return model_tok or next((t for p in cfg.data if (t := dataset_tokenizer(p)) is not None), None)


def lm_micro_batches(tokens: torch.Tensor, micro_batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Packed samples ``[n, L+1]`` -> ``(inputs, labels, loss mask)`` micro-batches of ``micro_batch_size``."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    mask = torch.ones_like(labels, dtype=torch.float32)
    return [
        (inputs[s : s + micro_batch_size], labels[s : s + micro_batch_size], mask[s : s + micro_batch_size])
        for s in range(0, tokens.shape[0], micro_batch_size)
    ]


#: examples per forward of the ``--eval-max-length`` validation: ``lqs evaluate``'s default micro-batch
EVALUATE_BATCH = EvaluateConfig.__dataclass_fields__["micro_batch_size"].default


class Pretrainer(Trainer):
    """All the pieces of one pretraining run on this rank, and the pretraining hooks of the loop."""

    def __init__(self, cfg: PretrainConfig, dims: ParallelDims):
        self.cfg, self.dims = cfg, dims
        self.out = Path(cfg.out)
        if dims.tp != cfg.tp:
            raise LQSError(f"--tp {cfg.tp} but the process groups were built for tp {dims.tp}")
        self.model_config, self.tokenizer = resolve_model_config(cfg)
        self.local_batch, self.micro_batch = cfg.local_batch(dims.dp)
        self.resume_dir = choose_resume_dir(cfg, dims)
        self._seed()
        # data: every rank opens the datasets and builds the same sample indices
        prefixes = [*cfg.data, *([cfg.valid_data] if cfg.valid_data else []), *([cfg.target] if cfg.target else [])]
        self.tokenizer_identity = run_tokenizer(cfg, self.tokenizer)
        check_token_ids(prefixes, self.model_config.vocab_size, dims)
        self.stream = SampleStream(
            cfg.data, cfg.max_length, cfg.steps * cfg.samples_per_step, cfg.data_weights, cfg.shuffle, cfg.seed
        )
        self.valid = self._valid_samples()
        # model and optimizer
        if cfg.init_from is not None:
            self.model = load_model(cfg.init_from, dims, make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by)
            self.model_config = self.model.config
        else:
            self.model = build_model(self.model_config, dims, cfg.seed, cfg.make_vocab_size_divisible_by)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, betas, cfg.adam_eps, dims=dims, distributed=cfg.distributed_optimizer
        )
        self.schedule = WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps)
        start, self._resumed = 0, {}
        if self.resume_dir is not None:
            self._resumed = load_training_state(self.resume_dir, self.model, self.optimizer, dims)
            start = int(self._resumed["step"])
            logger.info("resumed from %s at step %d", self.resume_dir, start)
        # changes accepted with --allow-changed-settings (checked and logged by choose_resume_dir): trainer.json
        self.resume_changes = list(self._resumed.get("resume_changes", []))
        if self.resume_dir is not None:
            changed = resume_changes(cfg, self._resumed, self.resume_dir)
            self.resume_changes += [{"step": start, **c} for c in changed]
        if cfg.compile and cfg.online_select:
            logger.warning("--compile is not used with --online-select (its candidate pass runs with layer hooks)")
        compiled = cfg.compile and not cfg.online_select
        loss_module = CausalLMLoss(torch.compile(self.model) if compiled else self.model)
        amp = autocast_dtype(cfg.precision, dims.device)
        if cfg.online_select:
            step_fn = self._online_step(loss_module, amp, start)
        else:
            step_fn = TrainStep(loss_module, dims, self.optimizer, self.schedule, cfg.clip_grad, amp)
        settings = LoopSettings(
            steps=cfg.steps,
            log_interval=cfg.log_interval,
            stop_after=cfg.stop_after,
            skip_nonfinite=cfg.skip_nonfinite,
            desc="pretrain",
            lr_hint=f"lower --lr (peak {cfg.lr:g}) or lengthen --warmup-steps (now {cfg.warmup_steps})",
            tensorboard=cfg.tensorboard,
            wandb_project=cfg.wandb,
            run_config=cfg.to_dict(),
        )
        super().__init__(dims, self.out, step_fn, settings, start)
        self.last_saved = start if self.resume_dir is not None else None
        self.skipped = list(self._resumed.get("skipped_nonfinite", []))  # the budget spans the whole run
        self.valid_loss = None

    def _online_step(self, loss_module, amp, start: int):
        """The step of ``--online-select`` (training/online.py), its target cache restored on resume."""
        from lqs_megatron.training.checkpoint import load_extra_shard
        from lqs_megatron.training.online import OnlineSettings, OnlineStep, SelectionLog, TargetBatches

        cfg = self.cfg
        settings = OnlineSettings(
            cfg.online_select,
            cfg.global_batch_size,
            cfg.candidates_per_pick,
            cfg.target_refresh,
            cfg.select_temperature,
            cfg.seed,
        )
        target = TargetBatches(
            cfg.target, cfg.max_length, cfg.target_batch_size, cfg.target_refresh, self.micro_batch, self.dims
        )
        step_fn = OnlineStep(
            loss_module, self.dims, self.optimizer, self.schedule, settings, target, cfg.clip_grad, amp
        )
        if self.resume_dir is not None and start % cfg.target_refresh:
            state = load_extra_shard(self.resume_dir, "online", self.dims)
            if state is None:
                logger.warning(
                    "--resume at step %d: %s holds no target gradient for tp %d; it is recomputed now (the run "
                    "departs from an uninterrupted one until the next refresh)",
                    start,
                    self.resume_dir,
                    self.dims.tp,
                )
            else:
                step_fn.load_target_state(state)
        self.selection_log = SelectionLog(self.out, start, self.dims.is_main)
        return step_fn

    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        if self.cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    def _valid_samples(self) -> PackedSamples | str | None:
        """The packed validation samples; with ``--eval-max-length`` the dataset's prefix (``lqs evaluate``'s
        examples are read at each evaluation)."""
        if self.cfg.valid_data is None:
            return None
        ds = open_dataset(self.cfg.valid_data)
        if self.cfg.eval_max_length is not None:
            if len(ds) == 0:
                raise LQSError(f"--valid-data {self.cfg.valid_data!r} holds no sequences")
            self.model_config.check_max_length(self.cfg.eval_max_length, "the model (--eval-max-length)")
            return self.cfg.valid_data
        n = min(self.cfg.eval_samples or PACKED_EVAL_SAMPLES, samples_available(ds.num_tokens, self.cfg.max_length))
        if n < 1:
            raise LQSError(f"--valid-data {self.cfg.valid_data!r} holds fewer than {self.cfg.max_length + 1} tokens")
        return PackedSamples(self.cfg.valid_data, self.cfg.max_length, n)

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_meta(self, step: int) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "padded_vocab_size": self.model.padded_vocab_size,
            "tp": self.dims.tp,
            "make_vocab_size_divisible_by": self.cfg.make_vocab_size_divisible_by,
            "step": step,
            "dtype": "float32",
            "tokenizer": self.tokenizer_identity,
        }

    def save_now(self, done: int) -> None:
        self.save(done, self.last.loss if self.last else None)

    def save(self, step: int, loss: float | None) -> Path:
        state = {
            "step": step,
            "consumed_samples": step * self.cfg.global_batch_size,
            "stream": self.cfg.stream_key(),
            "loss": loss,
            "world_size": self.dims.world_size,
            "skipped_nonfinite": self.skipped,
            "config": self.cfg.to_dict(),
            "resume_changes": self.resume_changes,
        }
        path = save_checkpoint(
            self.out,
            step,
            self.model,
            self.optimizer,
            self.dims,
            self.checkpoint_meta(step),
            state,
            self.tokenizer,
            keep_last=self.cfg.keep_last,
            extra_shards={"online": self.step_fn.target_state()} if self.cfg.online_select else None,
        )
        self.last_saved = step
        return path

    # ---------------------------------------------------------------- the loop's hooks

    def run(self) -> dict:
        dims = self.dims
        logger.info("model: %s | tp %d x dp %d | %s", model_summary(self.model_config), dims.tp, dims.dp, dims.device)
        if not self.cfg.online_select:
            return super().run()
        try:
            result = super().run()
        finally:
            self.selection_log.close()
        if dims.is_main and result["step"] == self.cfg.steps:
            self._source_report()
        return result

    def _source_report(self) -> None:
        """``OUT/online_selection_sources.json``: per source of the ``--data`` sidecar, what was kept."""
        from lqs_megatron.training.online import SOURCES_FILE, source_report
        from lqs_megatron.utils.atomic import save_json

        rep = source_report(self.out, self.stream_prefixes(), self.stream.first_document)
        if rep is None:
            return
        save_json(self.out / SOURCES_FILE, rep)
        for src, r in rep["sources"].items():
            logger.info(
                "online selection | source %s: kept %d of %d candidates (%.1f%%), %.1f%% of the kept",
                src,
                r["kept"],
                r["candidates"],
                100 * r["kept_rate"],
                100 * r["share_of_kept"],
            )

    def stream_prefixes(self) -> list[str]:
        from lqs_megatron.training.data import parse_blend

        return parse_blend(self.cfg.data, self.cfg.data_weights)[0]

    def batch(self, step: int) -> Batch:
        """This rank's samples of ``step``: global samples ``[step*S, (step+1)*S)``, sliced by dp rank
        (``S``: the global batch, or with ``--online-select`` its ``--candidates-per-pick`` candidates)."""
        local = self.local_batch * (self.cfg.candidates_per_pick if self.cfg.online_select else 1)
        start = step * self.cfg.samples_per_step + self.dims.dp_rank * local
        tokens = self.stream.batch(range(start, start + local)).to(self.dims.device, non_blocking=True)
        global_tokens = self.cfg.global_batch_size * self.cfg.max_length
        return Batch(lm_micro_batches(tokens, self.micro_batch), local, global_tokens)

    def record_fields(self, done: int) -> dict:
        fields = {"tokens": done * self.cfg.global_batch_size * self.cfg.max_length}
        rec = getattr(self.step_fn, "record", None)
        if rec is not None:
            fields.update(rec.seconds)
            fields.update(rec.summary())
        return fields

    def _log_selection(self, done: int) -> None:
        rec = self.step_fn.record
        first = (done - 1) * self.cfg.samples_per_step
        cands = list(range(first, first + self.cfg.samples_per_step))
        kept = [first + int(k) for k in rec.kept]
        self.selection_log.write(
            {
                "step": done,
                "candidates": cands,
                "kept": kept,
                "kept_documents": [list(self.stream.first_document(g)) for g in kept],
                "target_refreshed": rec.target_refreshed,
                **rec.summary(),
            }
        )

    def after_step(self, done: int) -> None:
        cfg = self.cfg
        final = done == cfg.steps
        if cfg.online_select and self.dims.is_main:
            self._log_selection(done)
        if self.valid is not None and ((cfg.eval_interval and done % cfg.eval_interval == 0) or final):
            self.valid_loss = self.evaluate()
            self.metrics.write({"step": done, "valid_loss": self.valid_loss})
            logger.info("step %d | validation loss %.4f", done, self.valid_loss)
        if (cfg.save_interval and done % cfg.save_interval == 0) or final:
            self.save(done, self.last.loss if self.last else None)

    def evaluate(self) -> float:
        """Mean per-example loss of the validation samples (split over the dp ranks); with
        ``--eval-max-length`` exactly what ``lqs evaluate`` computes (:func:`evaluate_dataset`)."""
        if isinstance(self.valid, str):
            res = evaluate_dataset(
                self.model,
                self.valid,
                self.cfg.eval_max_length,
                self.dims,
                EVALUATE_BATCH,
                self.cfg.precision,
                self.cfg.eval_samples,
                progress=False,
            )
            self.model.train()
            return res["loss"]
        lo, hi = rank_slice(len(self.valid), self.dims.dp, self.dims.dp_rank)
        total = torch.zeros(2, dtype=torch.float64, device=self.dims.device)
        if hi > lo:
            tokens = torch.from_numpy(np.stack([self.valid[i] for i in range(lo, hi)]).astype(np.int64))
            losses = self.losses(tokens)
            total += torch.stack([losses.double().sum(), torch.tensor(float(hi - lo), device=losses.device)])
        self.dims.all_reduce(total, group="dp")
        return float(total[0] / total[1])

    @torch.no_grad()
    def losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]`` per-example losses of packed samples (no gradient), micro-batch by micro-batch."""
        loss_module = self.step_fn.loss_module
        loss_module.eval()
        with self.step_fn.autocast():
            out = [loss_module(*mb) for mb in lm_micro_batches(tokens.to(self.dims.device), self.micro_batch)]
        loss_module.train()
        return torch.cat(out)

    def summary(self, end: int) -> dict:
        return {
            "step": end,
            "loss": self.last.loss if self.last else None,
            "valid_loss": self.valid_loss,
            "stopped_early": end < self.cfg.steps,
            "skipped_nonfinite": self.skipped,
            "checkpoint": str(self.out / step_dir_name(self.last_saved)) if self.last_saved else None,
        }


def pretrain(cfg: PretrainConfig, dims: ParallelDims) -> dict:
    """Run (or resume) a pretraining run on this rank, holding ``--out``'s lock; returns the final step's summary."""
    inputs = {"--data": cfg.data, "--tokenizer": cfg.tokenizer, "--init-from": cfg.init_from, "--target": cfg.target}
    with output_lock_on_main(cfg.out, dims, step="pretrain", inputs=inputs, kind="dir"):
        if dims.is_main:
            remove_leftovers(cfg.out)
        return Pretrainer(cfg, dims).run()


def model_summary(mc: ModelConfig) -> str:
    return (
        f"{mc.architecture} d={mc.hidden_size} L={mc.num_layers} H={mc.num_heads}/{mc.num_kv_heads} "
        f"ffn={mc.intermediate_size} V={mc.vocab_size} ({mc.num_parameters() / 1e6:.1f}M params)"
    )
