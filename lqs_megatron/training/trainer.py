"""``lqs pretrain``: build (model, data, optimizer) → resume → loop (step, log, eval, save) → close.

The driver is :func:`pretrain`; :class:`Pretrainer` holds the pieces so tests and benchmarks
can reach them. Exact resume: the sample stream is a pure function of the settings and the
step (``consumed_samples = step * global_batch_size``), the schedule a pure function of the
step, and the model, optimizer and RNG states come back from the checkpoint, so a resumed
run's losses equal an uninterrupted run's step for step.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.data.indexed import IndexedDataset
from lqs_megatron.data.sample_index import samples_available
from lqs_megatron.distributed import ParallelDims
from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.loading import build_model, load_model
from lqs_megatron.models.parallelize import check_tp
from lqs_megatron.training.checkpoint import load_training_state, save_checkpoint
from lqs_megatron.training.config import PretrainConfig, check_out_dir
from lqs_megatron.training.data import PackedSamples, SampleStream, check_token_ids
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.step import TrainStep
from lqs_megatron.utils.atomic import atomic_file

log = logging.getLogger(__name__)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def resolve_model_config(cfg: PretrainConfig):
    """``(ModelConfig, tokenizer or None)`` of the run, validated against ``--tp`` (no process group needed)."""
    from lqs_megatron.data.tokenizer import load_tokenizer, vocab_size  # noqa: PLC0415

    tok_dir = cfg.tokenizer
    if cfg.init_from is not None:
        from lqs_megatron.models.hf import config_from_hf, read_hf_config  # noqa: PLC0415

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
    check_tp(mc, cfg.tp, name=where)
    return mc, tok


class Pretrainer:
    """All the pieces of one run on this rank."""

    def __init__(self, cfg: PretrainConfig, dims: ParallelDims):
        self.cfg, self.dims = cfg, dims
        self.out = Path(cfg.out)
        if dims.tp != cfg.tp:
            raise LQSError(f"--tp {cfg.tp} but the process groups were built for tp {dims.tp}")
        self.model_config, self.tokenizer = resolve_model_config(cfg)
        self.local_batch, self.micro_batch = cfg.local_batch(dims.dp)
        self.resume_dir = check_out_dir(cfg)
        self._seed()
        # data: every rank opens the datasets and builds the same sample indices
        prefixes = [*cfg.data, *([cfg.valid_data] if cfg.valid_data else [])]
        check_token_ids(prefixes, self.model_config.vocab_size, dims)
        self.stream = SampleStream(
            cfg.data, cfg.max_length, cfg.steps * cfg.global_batch_size, cfg.data_weights, cfg.shuffle, cfg.seed
        )
        self.valid = self._valid_samples()
        # model and optimizer
        if cfg.init_from is not None:
            self.model = load_model(cfg.init_from, dims, make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by)
            self.model_config = self.model.config
        else:
            self.model = build_model(self.model_config, dims, cfg.seed, cfg.make_vocab_size_divisible_by)
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps
        )
        self.schedule = WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps)
        self.start_step = 0
        if self.resume_dir is not None:
            self._resume()
        self.step_fn = TrainStep(
            self.model, dims, self.optimizer, self.schedule, self.micro_batch, cfg.clip_grad, cfg.precision, cfg.compile
        )

    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        if self.cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    def _valid_samples(self) -> PackedSamples | None:
        if self.cfg.valid_data is None:
            return None
        ds = IndexedDataset(self.cfg.valid_data)
        n = min(self.cfg.eval_samples, samples_available(ds.num_tokens, self.cfg.max_length))
        if n < 1:
            raise LQSError(f"--valid-data {self.cfg.valid_data!r} holds fewer than {self.cfg.max_length + 1} tokens")
        return PackedSamples(self.cfg.valid_data, self.cfg.max_length, n)

    def _resume(self) -> None:
        state = load_training_state(self.resume_dir, self.model, self.optimizer, self.dims)
        self.start_step = int(state["step"])
        log.info("resumed from %s at step %d", self.resume_dir, self.start_step)

    # ---------------------------------------------------------------- one run

    def checkpoint_meta(self, step: int) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "padded_vocab_size": self.model.padded_vocab_size,
            "tp": self.dims.tp,
            "make_vocab_size_divisible_by": self.cfg.make_vocab_size_divisible_by,
            "step": step,
            "dtype": "float32",
        }

    def save(self, step: int, loss: float | None) -> Path:
        state = {
            "step": step,
            "consumed_samples": step * self.cfg.global_batch_size,
            "stream": self.cfg.stream_key(),
            "loss": loss,
            "world_size": self.dims.world_size,
            "config": self.cfg.to_dict(),
        }
        return save_checkpoint(
            self.out, step, self.model, self.optimizer, self.dims, self.checkpoint_meta(step), state, self.tokenizer
        )

    def batch(self, step: int) -> torch.Tensor:
        """This rank's samples of ``step``: global samples ``[step*B, (step+1)*B)``, sliced by dp rank."""
        start = step * self.cfg.global_batch_size + self.dims.dp_rank * self.local_batch
        return self.stream.batch(range(start, start + self.local_batch))

    def evaluate(self) -> float:
        """Mean per-example loss of the validation samples (split over the dp ranks)."""
        self.model.eval()
        idx = range(self.dims.dp_rank, len(self.valid), self.dims.dp)
        total = torch.zeros(2, dtype=torch.float64, device=self.dims.device)
        if len(idx):
            losses = self.step_fn.losses(torch.from_numpy(np.stack([self.valid[i] for i in idx]).astype(np.int64)))
            total += torch.stack([losses.double().sum(), torch.tensor(float(len(idx)), device=losses.device)])
        self.dims.all_reduce(total, group="dp")
        self.model.train()
        return float(total[0] / total[1])

    def run(self) -> dict:
        cfg, dims = self.cfg, self.dims
        log.info("model: %s | tp %d x dp %d | %s", model_summary(self.model_config), dims.tp, dims.dp, dims.device)
        metrics = _MetricsLog(self.out, self.start_step, dims.is_main)
        tokens_per_step = cfg.global_batch_size * cfg.max_length
        end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        progress = _progress(cfg.steps, self.start_step, dims.is_main)
        loss = valid_loss = None
        last_saved = self.start_step if self.resume_dir is not None else None
        t_window, n_window = 0.0, 0  # time spent in training steps (data included; eval and saving not)
        for step in range(self.start_step, end):
            t0 = time.perf_counter()
            out = self.step_fn(self.batch(step), step)
            done = step + 1
            loss = float(out["loss"])  # waits for the step
            t_window += time.perf_counter() - t0
            n_window += 1
            rec = {"step": done, "loss": loss, "lr": out["lr"], "grad_norm": float(out["grad_norm"])}
            if done % cfg.log_interval == 0 or done == end:
                rec["tokens_per_s"] = tokens_per_step * n_window / max(t_window, 1e-9)
                t_window, n_window = 0.0, 0
                log.info(
                    "step %d/%d | loss %.4f | lr %.3g | grad norm %.3f | %.0f tok/s",
                    done, cfg.steps, loss, rec["lr"], rec["grad_norm"], rec["tokens_per_s"],
                )  # fmt: skip
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            rec["tokens"] = done * tokens_per_step
            metrics.write(rec)
            progress.update(1)
            final = done == cfg.steps
            if self.valid is not None and ((cfg.eval_interval and done % cfg.eval_interval == 0) or final):
                valid_loss = self.evaluate()
                metrics.write({"step": done, "valid_loss": valid_loss})
                log.info("step %d | validation loss %.4f", done, valid_loss)
            if (cfg.save_interval and done % cfg.save_interval == 0) or final:
                self.save(done, loss)
                last_saved = done
        progress.close()
        metrics.close()
        stopped = end < cfg.steps
        return {
            "step": end,
            "loss": loss,
            "valid_loss": valid_loss,
            "stopped_early": stopped,
            "checkpoint": str(self.out / f"step_{last_saved:08d}") if last_saved else None,
        }


class _MetricsLog:
    """``OUT/metrics.jsonl`` (every step, rank 0) and TensorBoard scalars under ``OUT/tb`` if installed.

    On resume, records after the resumed step (from the lost part of the killed run) are dropped."""

    def __init__(self, out: Path, start_step: int, active: bool):
        self.active, self.f, self.tb = active, None, None
        if not active:
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.jsonl"
        kept = []
        if path.is_file() and start_step > 0:
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start_step]
        with atomic_file(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))
        self.f = open(path, "a")  # noqa: SIM115 - an append-only log, closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, rec: dict) -> None:
        if not self.active:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and v is not None:
                    self.tb.add_scalar(f"valid/{k}" if k.startswith("valid") else f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


def _progress(total: int, initial: int, active: bool):
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(
        total=total, initial=initial, unit="step", file=sys.stderr, disable=not active or None, dynamic_ncols=True
    )


def pretrain(cfg: PretrainConfig, dims: ParallelDims) -> dict:
    """Run (or resume) a pretraining run on this rank; returns the final step's summary."""
    return Pretrainer(cfg, dims).run()


def model_summary(mc: ModelConfig) -> str:
    return (
        f"{mc.architecture} d={mc.hidden_size} L={mc.num_layers} H={mc.num_heads}/{mc.num_kv_heads} "
        f"ffn={mc.intermediate_size} V={mc.vocab_size} ({mc.num_parameters() / 1e6:.1f}M params)"
    )
