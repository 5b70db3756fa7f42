"""Atomic outputs: write under a temporary name, rename into place only when complete.

A killed job must never leave an output that *looks* finished. Every writer in the
project goes through these helpers:

- :func:`atomic_file` for one file (``.npy``, ``.json``, ``.jsonl``);
- :func:`atomic_prefix` for an indexed dataset ``PREFIX.bin`` + ``PREFIX.idx``: the
  ``.idx`` is renamed last, so it is the completion marker (a reader needs both);
- :func:`atomic_dir` for a directory (checkpoints, HF exports, tokenizers).

Temporary names live beside the target (same filesystem, so ``os.replace`` is
atomic) and start with the target's name plus ``.tmp-<pid>``, so a leftover is
easy to recognise and never mistaken for the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync and rename it to ``path``; on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that got us here (e.g. behind EROFS)
            tmp.unlink()
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_file` (the name is kept exactly, no ``.npy`` appended)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_json(path: str | os.PathLike, obj: object) -> None:
    """Pretty JSON through :func:`atomic_file`."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


@contextlib.contextmanager
def atomic_prefix(prefix: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary *prefix* for an indexed dataset; on success rename ``.bin`` then ``.idx``.

    Any old ``PREFIX.idx`` is removed before the new ``.bin`` is moved in, so at no
    moment does a complete-looking pair mix old and new files.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(prefix)
    tmp_bin, tmp_idx = Path(f"{tmp}.bin"), Path(f"{tmp}.idx")
    try:
        yield str(tmp)
        for p in (tmp_bin, tmp_idx):
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{prefix}.idx")
        os.replace(tmp_bin, f"{prefix}.bin")
        os.replace(tmp_idx, f"{prefix}.idx")
    except BaseException:
        for p in (tmp_bin, tmp_idx):
            with contextlib.suppress(OSError):  # never hide the error that got us here (e.g. behind EROFS)
                p.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory; on success replace ``path`` with it.

    With ``overwrite`` an existing ``path`` is moved aside and deleted only after the
    new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
