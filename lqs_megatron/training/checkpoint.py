"""Training checkpoints: the on-disk format, written atomically by all ranks together.

::

    OUT/
      latest                          # one line: the newest complete step directory's name
      step_00000100/
        config.json                   # format, model config, padded vocab, tp (see CHECKPOINT_FORMAT)
        model-tp00-of-02.safetensors  # this tp rank's shard (one file per tp rank)
        optimizer-tp00-of-02.pt       # AdamW state of that shard (identical across dp ranks)
        trainer.json                  # step, consumed samples, schedule, the run's settings
        rng-rank00000.pt              # torch / CUDA / numpy / python RNG of each rank
        tokenizer/                    # tokenizer files (export-hf writes them next to the model)
      metrics.jsonl, tb/              # logs (not part of a checkpoint)

A step directory is written as ``step_X.tmp`` and renamed when every rank has finished
(barrier); only then is ``latest`` replaced (atomic rename). A killed job leaves at
worst a ``.tmp`` directory, never a directory that looks complete. All ranks write into
the same directory, so multi-node runs need ``OUT`` on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.distributed import ParallelDims
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file, save_json

CHECKPOINT_FORMAT = "lqs_megatron.checkpoint"
CHECKPOINT_VERSION = 1
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def shard_name(kind: str, tp_rank: int, tp: int, ext: str) -> str:
    return f"{kind}-tp{tp_rank:02d}-of-{tp:02d}.{ext}"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint root (with ``latest``) or one step directory of it."""
    p = Path(path)
    if (p / LATEST).is_file():
        return True
    cfg = p / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError):
        return False


def latest_step_dir(root: str | os.PathLike) -> Path | None:
    """The step directory ``root/latest`` names, or None when there is no complete checkpoint."""
    marker = Path(root) / LATEST
    if not marker.is_file():
        return None
    d = Path(root) / marker.read_text().strip()
    if not (d / "config.json").is_file():
        raise LQSError(f"{marker} names {d.name}, which is missing or incomplete")
    return d


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint root (its latest step) or a step directory -> the step directory."""
    p = Path(path)
    if not p.exists():
        raise LQSError(f"checkpoint {str(p)!r} does not exist")
    d = latest_step_dir(p) if (p / LATEST).is_file() else p
    if not is_checkpoint(d):
        raise LQSError(f"{p} is not a lqs_megatron checkpoint (no {LATEST} marker and no checkpoint config.json)")
    return d


def read_config(step_dir: str | os.PathLike) -> dict:
    meta = json.loads((Path(step_dir) / "config.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise LQSError(f"{step_dir}/config.json: not a version-{CHECKPOINT_VERSION} lqs_megatron checkpoint")
    return meta


def read_model_shard(step_dir: str | os.PathLike, tp_rank: int, tp: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # noqa: PLC0415

    f = Path(step_dir) / shard_name("model", tp_rank, tp, "safetensors")
    if not f.is_file():
        raise LQSError(f"checkpoint shard {f} is missing")
    return load_file(f)


def read_full_state_dict(step_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tp shard merged into the full (padded) state dict."""
    from lqs_megatron.models.parallelize import merge_state_dicts  # noqa: PLC0415

    tp = read_config(step_dir)["tp"]
    return merge_state_dicts([read_model_shard(step_dir, r, tp) for r in range(tp)])


def rng_state() -> dict:
    """Every RNG a training step can draw from (torch CPU and CUDA, numpy, Python), for exact resume."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's tensors to store: tied output weight dropped (safetensors stores no aliases)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("output.weight", None)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dims: ParallelDims,
    meta: dict,
    trainer_state: dict,
    tokenizer=None,
) -> Path:
    """Write ``root/step_X`` (collective: every rank calls it) and point ``latest`` at it.

    ``tokenizer``: a transformers tokenizer saved into ``tokenizer/`` (for ``export-hf``)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp"
    if dims.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dims.barrier()
    tp, tpr = dims.tp, dims.tp_rank
    if dims.dp_rank == 0:
        save_file(model_state_for_save(model), tmp / shard_name("model", tpr, tp, "safetensors"), {"format": "pt"})
        torch.save(optimizer.state_dict(), tmp / shard_name("optimizer", tpr, tp, "pt"))
    torch.save(rng_state(), tmp / f"rng-rank{dims.rank:05d}.pt")
    if dims.is_main:
        save_json(tmp / "config.json", {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta})
        save_json(tmp / "trainer.json", trainer_state)
        if tokenizer is not None:  # loadable by transformers 4.x and 5.x, tokenizer.model kept
            from lqs_megatron.models.hf import save_tokenizer  # noqa: PLC0415

            save_tokenizer(tokenizer, tmp / "tokenizer")
    dims.barrier()
    if dims.is_main:
        if final.exists():
            old = root / f"{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        with atomic_file(root / LATEST) as t:
            t.write_text(final.name + "\n")
    dims.barrier()
    return final


def load_training_state(
    step_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dims: ParallelDims
) -> dict:
    """Restore model shard, optimizer and this rank's RNG from ``step_dir``; return ``trainer.json``."""
    step_dir = Path(step_dir)
    meta = read_config(step_dir)
    if meta["tp"] != dims.tp:
        raise LQSError(f"{step_dir} was written with --tp {meta['tp']}; resume with the same --tp (got {dims.tp})")
    sd = read_model_shard(step_dir, dims.tp_rank, dims.tp)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (model.config.tie_word_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise LQSError(f"{step_dir}: model shard does not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    opt_file = step_dir / shard_name("optimizer", dims.tp_rank, dims.tp, "pt")
    optimizer.load_state_dict(torch.load(opt_file, map_location=dims.device, weights_only=False))
    rng = step_dir / f"rng-rank{dims.rank:05d}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((step_dir / "trainer.json").read_text())
