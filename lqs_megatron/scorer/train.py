"""Scorer training (``lqs train-scorer``): MSE on the normalised scores, data parallel, resumable.

The loop (one optimizer step per global batch of ``batch_size`` sequences):

- data order: epoch ``e`` visits the training split in the seeded permutation
  ``default_rng([seed, e])``; batch ``s`` is ``perm[s*B : (s+1)*B]`` (the last partial batch
  of an epoch is dropped, a different one each epoch). Each data-parallel rank takes a
  contiguous ``1/dp`` of the batch, sorts it by length and cuts it into
  ``batch_size / (dp * micro_batch_size)`` micro-batches: the gradient of the whole batch is
  the same however it is cut, and micro-batches of similar lengths waste little padding;
- loss: mean squared error of the batch (each micro-batch's mean divided by the number of
  micro-batches; DDP averages over ranks), bf16 autocast on CUDA, float32 head and loss;
- AdamW (no weight decay on biases and norm weights), linear warmup then cosine to
  ``min_lr``, gradient clipping by global norm;
- after every epoch: predictions on the valid split (the length-bucketed path of
  ``lqs score``, split across ranks), MSE, Pearson and Spearman against the targets.
  The best epoch **by validation Pearson** is kept in ``OUT/best`` (Pearson ignores an
  affine rescaling of the predictions, as top-k selection and ordering do; MSE would
  prefer a well-calibrated but worse-ranking model);
- ``OUT/last`` (every ``save_interval`` steps and at each epoch end) holds the model,
  the optimizer, the position (epoch, step) and the RNG: ``--resume`` continues from it
  exactly where it stopped. Both directories are written atomically by rank 0 (the model
  is replicated in data parallelism).

Layout::

    OUT/best/   scorer.json (meta: epoch, metrics, arguments), model.safetensors, tokenizer/
    OUT/last/   the same files + optimizer.pt, trainer.json, rng.pt
    OUT/metrics.jsonl   one line per log interval and per validation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.compat import check_same_tokenizer
from lqs_megatron.scorer.config import TrainScorerConfig
from lqs_megatron.scorer.data import load_split, load_stats
from lqs_megatron.scorer.metrics import regression_metrics
from lqs_megatron.scorer.model import Scorer, ScorerConfig, build_scorer, load_scorer, mse_loss, save_scorer, unwrap
from lqs_megatron.scorer.predict import collate, predict
from lqs_megatron.training.checkpoint import rng_state, set_rng_state
from lqs_megatron.training.optim import WarmupCosine, build_optimizer, clip_grad_norm, set_lr
from lqs_megatron.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)


def schedule(cfg: TrainScorerConfig, total_steps: int) -> WarmupCosine:
    """Linear warmup over ``cfg.warmup`` steps to ``cfg.lr``, then cosine down to ``cfg.min_lr`` at the last step."""
    return WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup, total_steps)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def micro_batches(batch: np.ndarray, lengths: np.ndarray, dims, accum: int) -> list[np.ndarray]:
    """This rank's contiguous share of a global batch, sorted by length, cut into ``accum`` micro-batches."""
    part = np.array_split(batch, dims.world_size)[dims.rank]
    part = part[np.argsort(-lengths[part], kind="stable")]
    return np.array_split(part, accum)


def _gather(arr: np.ndarray, dims) -> list[np.ndarray]:
    if not dims.distributed:
        return [arr]
    import torch.distributed as dist  # noqa: PLC0415

    out = [None] * dims.world_size
    dist.all_gather_object(out, arr)
    return out


def evaluate(
    model: Scorer, cfg: ScorerConfig, split, dims, max_tokens: int | None, autocast: torch.dtype | None = None
) -> dict[str, float]:
    """Valid-split metrics; every rank predicts a contiguous share, rank order restores the split order."""
    n = len(split.data)
    mine = np.array_split(np.arange(n), dims.world_size)[dims.rank]
    was_training = model.training
    model.eval()
    pred = predict(model, cfg, split.data, mine, dims.device, max_tokens=max_tokens, autocast=autocast)
    model.train(was_training)
    full = np.concatenate(_gather(pred, dims))
    return regression_metrics(full, split.scores)


def _write_ckpt(path: Path, model, scfg, tok_dir, meta: dict, extra=None) -> None:
    """Rank 0 writes a scorer checkpoint directory atomically (``extra(tmp)`` adds files)."""
    scfg = dataclasses.replace(scfg, meta=meta)
    with atomic_dir(path) as tmp:
        save_scorer(model, scfg, tok_dir, tmp)
        if extra is not None:
            extra(tmp)


def train_scorer(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TrainScorerConfig | None = None,
    base: str | None = None,
    model_config: str | None = None,
    tokenizer: str | None = None,
    resume: bool = False,
    dims=None,
    progress: bool = True,
) -> dict:
    """Train a scorer on ``data_dir`` (``lqs prepare-scorer-data`` output); write ``out_dir/{best,last}``."""
    from lqs_megatron.distributed import ParallelDims  # noqa: PLC0415

    cfg = cfg or TrainScorerConfig()
    dims = dims or ParallelDims(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    last = out / "last"
    train, valid = load_split(data_dir, "train"), load_split(data_dir, "valid")
    accum = cfg.accumulation(dims.world_size)
    steps_per_epoch = len(train.data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise LQSError(
            f"--batch-size {cfg.batch_size} is larger than the training split ({len(train.data)} sequences); lower it"
        )
    total_steps = steps_per_epoch * cfg.epochs

    if resume and (last / "trainer.json").is_file():
        model, scfg, _ = load_scorer(last)
        tok_dir = str(last / "tokenizer")
        state = json.loads((last / "trainer.json").read_text())
        logger.info("resuming from %s at epoch %d, step %d", last, state["epoch"], state["step_in_epoch"])
    else:
        if (last / "trainer.json").is_file():
            raise LQSError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        model, scfg, tok_dir = build_scorer(base, model_config, tokenizer, cfg.max_length, cfg.seed, cfg.use_bos)
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "history": []}
    check_same_tokenizer(
        scfg.tokenizer,
        load_stats(data_dir).get("tokenizer"),
        f"scorer data {str(data_dir)!r}",
        "the scorer",
        hint=" (prepare-scorer-data records it from --src/--dst-tokenizer or PREFIX.stats.json)",
    )

    device = dims.device
    model = model.to(device).train()
    # torch's AdamW defaults (PDS/DELT's scorer optimizer), through the shared builder
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    lr_of = schedule(cfg, total_steps)
    if resume and (last / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", map_location=device, weights_only=False))
        set_rng_state(torch.load(last / "rng.pt", weights_only=False))
    params = [p for p in model.parameters() if p.requires_grad]
    net = model
    if dims.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        net = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=scfg.backbone == "hf",  # an HF base model may hold parameters it never uses
        )
    use_bf16 = device.type == "cuda" and cfg.bf16
    train_lengths = scfg.effective_lengths(train.data.sequence_lengths)
    run_meta = {"args": dataclasses.asdict(cfg), "data": str(data_dir), "source": scfg.source}

    def save_last(tmp_extra_state: dict) -> None:
        if dims.is_main:

            def extra(tmp: Path) -> None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(rng_state(), tmp / "rng.pt")
                (tmp / "trainer.json").write_text(json.dumps(tmp_extra_state, indent=2) + "\n")

            _write_ckpt(last, model, scfg, tok_dir, {**run_meta, "trainer": tmp_extra_state}, extra)
        dims.barrier()

    def log_metrics(record: dict) -> None:
        if dims.is_main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    if dims.is_main:
        out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and dims.is_main:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=total_steps, initial=state["global_step"], unit="step", desc="train-scorer", disable=None)
    t0, run_loss = time.time(), []
    for epoch in range(state["epoch"], cfg.epochs):
        order = epoch_order(len(train.data), cfg.seed, epoch)
        for step in range(state["step_in_epoch"], steps_per_epoch):
            lr = lr_of(state["global_step"])
            set_lr(optimizer, lr)
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss_sum = torch.zeros((), device=device)
            for m, mb in enumerate(micro_batches(batch, train_lengths, dims, accum)):
                ids, lens = collate(train.data, mb, scfg)
                ids, lens = torch.from_numpy(ids).to(device), torch.from_numpy(lens).to(device)
                target = torch.from_numpy(train.scores[mb]).to(device)
                sync = m == accum - 1 or not dims.distributed
                ctx = net.no_sync() if not sync else contextlib.nullcontext()
                with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss = mse_loss(net(ids, lens), target) / accum
                    loss.backward()
                loss_sum += loss.detach()
            gnorm = clip_grad_norm(params, cfg.clip_grad, dims)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["step_in_epoch"] = step + 1
            run_loss.append(loss_sum)
            if state["global_step"] % cfg.log_interval == 0 or step + 1 == steps_per_epoch:
                mean_loss = float(dims.all_reduce(torch.stack(run_loss).mean()) / dims.world_size)
                log_metrics(
                    {
                        "step": state["global_step"],
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": lr,
                        "grad_norm": float(gnorm),
                    }
                )
                if bar is not None:
                    bar.set_postfix_str(f"loss {mean_loss:.4f}, lr {lr:.2e}", refresh=False)
                run_loss = []
            if bar is not None:
                bar.update(1)
            if cfg.save_interval and state["global_step"] % cfg.save_interval == 0 and step + 1 < steps_per_epoch:
                save_last(dict(state, epoch=epoch))
        amp = torch.bfloat16 if use_bf16 else None
        metrics = evaluate(unwrap(net), scfg, valid, dims, cfg.eval_batch_tokens, amp)
        record = {"epoch": epoch + 1, "step": state["global_step"], **{f"valid_{k}": v for k, v in metrics.items()}}
        state["history"].append(record)
        log_metrics(record)
        logger.info(
            "epoch %d/%d: valid MSE %.4f, Pearson %.4f, Spearman %.4f",
            epoch + 1,
            cfg.epochs,
            metrics["mse"],
            metrics["pearson"],
            metrics["spearman"],
        )
        if state["best"] is None or metrics["pearson"] > state["best"]["valid_pearson"]:
            state["best"] = record
            if dims.is_main:
                _write_ckpt(out / "best", model, scfg, tok_dir, {**run_meta, "best": record, "selected_by": "pearson"})
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        save_last(dict(state))
    if bar is not None:
        bar.close()
    result = {
        "out": str(out / "best"),
        "best_epoch": state["best"]["epoch"],
        "best_valid": {k: state["best"][f"valid_{k}"] for k in ("mse", "pearson", "spearman")},
        "steps": state["global_step"],
        "seconds": round(time.time() - t0, 3),
    }
    return result
