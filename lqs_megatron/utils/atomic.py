"""Atomic outputs: write under a temporary name, rename into place only when complete.

A killed job must never leave an output that *looks* finished. Every writer in the
project goes through these helpers:

- :func:`atomic_file` for one file (``.npy``, ``.json``, ``.jsonl``);
- :func:`atomic_prefix` for an indexed dataset ``PREFIX.bin`` + ``PREFIX.idx``: the
  ``.idx`` is renamed last, so it is the completion marker (a reader needs both);
- :func:`atomic_dir` for a directory (checkpoints, HF exports, tokenizers); it leaves the
  marker :data:`MARKER` inside, naming the command that wrote it, so a later run can tell
  its own earlier output from a directory it must not replace (:func:`check_replaceable`).

Temporary names live beside the target (same filesystem, so ``os.replace`` is
atomic) and start with the target's name plus ``.tmp-<pid>`` (``.old-<pid>`` for a replaced
directory on its way out), so a leftover is easy to recognise and never mistaken for the
output; :func:`clean_stale_temps` removes those of dead processes on the next run.

Which outputs a command may write at all, and the lock it holds meanwhile, is the output
rule of :mod:`lqs_megatron.utils.lock` (:func:`~lqs_megatron.utils.lock.output_lock`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lqs_megatron.errors import LQSError

logger = logging.getLogger(__name__)

MARKER = ".lqs-output.json"
"""The file inside a directory written by :func:`atomic_dir`: ``{"command": "<lqs subcommand>"}``."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(outputs: Iterable[str | os.PathLike]) -> list[str]:
    """Remove what killed runs left beside each output path: ``NAME.tmp-PID`` (a file or a directory),
    ``NAME.tmp-PID.bin`` / ``.idx`` (a dataset prefix) and ``NAME.old-PID`` (a replaced directory), for the
    exact names given and only when process PID is gone (a live run's temporaries are never touched; the
    caller holds the output's lock, so no other run of this output can be writing). Returns the removed
    paths, each also logged."""
    removed = []
    for out in outputs:
        out = os.path.abspath(os.fspath(out))
        parent, name = os.path.split(out)
        ours = re.compile("^" + re.escape(name) + r"\.(tmp|old)-(\d+)(\.bin|\.idx)?$")
        try:
            entries = os.listdir(parent or ".")
        except OSError:
            continue
        for entry in entries:
            m = ours.match(entry)
            if not m:
                continue
            pid = int(m.group(2))
            if pid == os.getpid() or pid_alive(pid):
                continue
            path = os.path.join(parent, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            removed.append(path)
            logger.warning("removed %s, left by a run that was killed (pid %d is gone)", path, pid)
    return removed


def check_replaceable(path: str | os.PathLike, command: str, known: Iterable[str] = (), flag: str = "--out") -> None:
    """Raise :class:`LQSError` unless the directory ``path`` may be replaced by an output of ``command``.

    Allowed: no ``path``; an empty directory; an earlier output of ``command`` (its :data:`MARKER` says so,
    or, for outputs written before the marker existed, every entry matches one of the glob patterns
    ``known``). Anything else (a file, a checkpoint, another command's output, a directory of unrelated files)
    is refused, naming what is there."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise LQSError(f"{flag} {path} is a file; {command} writes a directory there: choose another {flag}")
    entries = sorted(os.listdir(path))
    if not entries:
        return
    if MARKER in entries:
        try:
            owner = json.loads((path / MARKER).read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == command:
            return
        what = f"an output of `lqs {owner}`" if owner else "a directory with an unreadable marker"
    else:
        known = tuple(known)
        foreign = [e for e in entries if not any(fnmatch.fnmatchcase(e, k) for k in known)]
        if known and not foreign:
            return
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        what = f"a non-empty directory that `lqs {command}` did not write (it holds {shown})"
    raise LQSError(
        f"{flag} {path} is {what}; replacing it would delete what is there: choose another {flag}, or remove "
        "that directory first if nothing in it is needed"
    )


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
def atomic_dir(path: str | os.PathLike, overwrite: bool = True, command: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success replace ``path`` with it.

    With ``overwrite`` an existing ``path`` is moved aside and deleted only after the
    new one is in place. ``command`` (the ``lqs`` subcommand) is recorded in :data:`MARKER` inside.
    """
    path = Path(os.path.realpath(path))  # a symlinked --out is replaced at its target, not the link itself
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if command is not None:
            (tmp / MARKER).write_text(json.dumps({"command": command}) + "\n")
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
