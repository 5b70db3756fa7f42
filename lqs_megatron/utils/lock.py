"""One run per output: an exclusive lock file ``OUT.lock`` beside every output a command writes.

Two jobs writing the same ``--out`` replace each other's files silently (checkpoints,
metrics, datasets). Every command that writes an output takes :func:`output_lock` on it
first (in a torchrun job only global rank 0 does, before the work starts):

- the lock file ``<out>.lock`` (beside the output, so it works for a dataset prefix, a
  file or a directory, and survives the atomic replacement of a directory) holds one
  JSON object: ``pid``, ``host``, ``started`` (UTC, ISO 8601) and ``command``;
- it is held with ``flock`` while the run lives, so a run killed with SIGKILL releases it
  at once on this host; the file itself is removed on a clean exit;
- a second run on the same output fails at once with :class:`OutputLocked`, naming the
  holder (pid, host, start time, command);
- a stale lock (a lock file whose pid no longer runs on this host, e.g. after a node
  reboot) is taken over with a warning. A lock written on *another* host cannot be
  checked from here: it is refused, with the hint to delete the file if that job is gone
  (``flock`` over a network filesystem is not relied upon).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from lqs_megatron.errors import LQSError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class OutputLocked(LQSError):
    """Another live run holds the output's lock; ``holder`` is its lock record."""

    def __init__(self, path: str, holder: dict):
        self.path, self.holder = path, holder
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started") if k in holder)
        cmd = holder.get("command")
        super().__init__(
            f"{path} is locked by another run ({who}{'; command: ' + cmd if cmd else ''}); wait for it to finish, "
            f"or choose another --out (if that run is gone, delete {path})"
        )


def lock_path(out: str | os.PathLike) -> str:
    """``<out>.lock`` (a trailing slash of a directory is ignored)."""
    return os.path.normpath(str(out)) + LOCK_SUFFIX


def _record(command: str | None) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        obj = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(path: str, command: str | None) -> int:
    """Open, flock and fill the lock file; return its descriptor. Raises :class:`OutputLocked`."""
    while True:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only mount, no permission: the run cannot write its output either
            raise LQSError(
                f"cannot create {path}: {e.strerror or e} (the output must be on a writable filesystem)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputLocked(path, holder) from None
            raise
        # The holder may have removed the file between our open and our flock: retry on the new file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        holder = _read(fd)
        if holder:
            if holder.get("host") != socket.gethostname():
                os.close(fd)
                raise OutputLocked(path, holder)
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
                os.close(fd)
                raise OutputLocked(path, holder)
            logger.warning(
                "taking over the stale lock %s (pid %s on %s, started %s, is gone)",
                path,
                pid,
                holder.get("host"),
                holder.get("started"),
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(_record(command)) + "\n").encode())
        os.fsync(fd)
        return fd


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str | None = None, enabled: bool = True) -> Iterator[str | None]:
    """Hold ``<out>.lock`` for the body; yield its path (``None`` when ``enabled`` is false, e.g. rank > 0).

    ``command`` is recorded for the error a second run prints (default: this process's argv).
    """
    if not enabled:
        yield None
        return
    path = lock_path(out)
    fd = _acquire(path, command)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the flock


def check_unlocked(out: str | os.PathLike) -> None:
    """Raise :class:`OutputLocked` when a live run on this host holds ``out``'s lock (a read-only probe: it
    takes no lock, so many ranks may call it at once; :func:`output_lock` still decides)."""
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        holder = _read(fd)
    finally:
        os.close(fd)
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise OutputLocked(path, holder)


@contextlib.contextmanager
def output_lock_on_main(out: str | os.PathLike, dims, command: str | None = None) -> Iterator[str | None]:
    """:func:`output_lock` taken by global rank 0 of a (possibly distributed) job; every rank learns the
    outcome, so when the lock is refused **every** rank raises (none is left waiting in a collective).

    ``dims``: a :class:`~lqs_megatron.parallel.dims.ParallelDims` (collective: every rank calls this)."""
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        path = None
        if dims.is_main:
            try:
                path = stack.enter_context(output_lock(out, command))
            except (LQSError, OSError) as e:
                failure = e
        msg = dims.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if msg is not None:
            raise LQSError(msg)
        yield path
