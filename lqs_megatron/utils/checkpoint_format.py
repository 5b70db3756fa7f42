"""The checkpoint format, read side: names, markers, configs and validated shards of a step directory.

Below models and training (docs/design.md, "Layers"): ``models/loading.py`` reads checkpoints
with it, ``training/checkpoint.py`` writes them (its docstring draws the layout), and the scorer
tells its own checkpoints apart with :func:`is_checkpoint`. Nothing here imports above ``utils``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.integrity import CorruptFile, load_safetensors, verify_dir

CHECKPOINT_FORMAT = "lqs_megatron.checkpoint"
CHECKPOINT_VERSION = 1
LATEST = "latest"
_STEP_RE = re.compile(r"step_(\d{8})")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def shard_name(kind: str, tp_rank: int, tp: int, ext: str) -> str:
    return f"{kind}-tp{tp_rank:02d}-of-{tp:02d}.{ext}"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint root of a language model (with ``latest``) or one step directory of it.

    A ``lqs train-scorer`` output has the same layout but its steps hold ``scorer.json``: not one."""
    p = Path(path)
    marker = p / LATEST
    if marker.is_file():
        step = p / marker.read_text().strip()
        return not (step / "scorer.json").is_file() and not (p / "best" / "scorer.json").is_file()
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
    path = Path(step_dir) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptFile(path, "missing") from None
    except ValueError as e:
        raise CorruptFile(path, f"unreadable ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise LQSError(f"{step_dir}/config.json: not a version-{CHECKPOINT_VERSION} lqs_megatron checkpoint")
    return meta


def read_model_shard(step_dir: str | os.PathLike, tp_rank: int, tp: int) -> dict[str, torch.Tensor]:
    """One tp shard, validated (size, checksum, header) and refused when it holds NaN/Inf (names the file)."""
    f = Path(step_dir) / shard_name("model", tp_rank, tp, "safetensors")
    if not f.is_file():
        raise LQSError(f"checkpoint shard {f} is missing")
    return load_safetensors(f)


def step_of(name: str) -> int | None:
    """The step of a complete step directory's name (``step_00000100`` -> 100); None for anything else."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def step_dirs(root: str | os.PathLike) -> list[Path]:
    """The complete-looking step directories under ``root``, newest first (``.tmp`` ones excluded)."""
    root = Path(root)
    found = [(step_of(p.name), p) for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)[::-1]]


def validate_step_dir(
    step_dir: str | os.PathLike, crc: bool = True, required: tuple[str, ...] = ("config.json", "trainer.json")
) -> dict:
    """Check a step directory before trusting it: the ``required`` files (a language model's config and
    trainer state by default; the scorer names its own), every file's size and checksum (when recorded),
    safetensors headers, complete torch archives. Returns ``trainer.json``; raises
    :class:`~lqs_megatron.utils.integrity.CorruptFile` / :class:`LQSError` naming the file."""
    d = Path(step_dir)
    for name in required:
        if not (d / name).is_file():
            raise CorruptFile(d / name, "missing")
    verify_dir(d, crc=crc)
    try:
        return json.loads((d / "trainer.json").read_text())
    except ValueError as e:
        raise CorruptFile(d / "trainer.json", f"unreadable ({e})") from None
