"""The output rule: one run per output, and no output that lands on what it must not destroy.

Every command that writes takes :func:`output_lock` on its ``--out`` before the work starts. Besides the
lock (below) it checks, once, before anything is written (:func:`check_output`):

- **no input is overwritten**: no path the run writes (``--out`` and, for a dataset prefix, its ``.bin``,
  ``.idx`` and sidecars) may equal, lie inside, or contain a path the run reads (each input flag; for a
  dataset also its ``.bin``/``.idx`` and the raw corpus its ``.stats.json`` names; for a view,
  ``PREFIX.view.json``, its indices and everything its source dataset reads), compared as real paths
  (symlinks resolved);
- **no foreign directory is replaced**: a command that replaces ``--out`` as a whole directory (export-hf,
  train-tokenizer, prepare-scorer-data) does so only when it is absent, empty, or an earlier output of the
  same command (:func:`~lqs_megatron.utils.atomic.check_replaceable`);
- **its own leftovers go**: temporaries of killed runs of this output (``.tmp-PID``, ``.old-PID``) are
  removed when their pid is gone (:func:`~lqs_megatron.utils.atomic.clean_stale_temps`);
- **a full or read-only disk is one line** (:func:`~lqs_megatron.utils.integrity.disk_errors`), naming the
  output.

The lock itself:

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
- the lock is keyed on the output's real path (``realpath(out) + ".lock"``), so a symlinked alias of the
  same output meets the same lock;
- a stale lock (a lock file whose pid no longer runs on this host, e.g. after a node
  reboot) is taken over with a warning. A lock written on *another* host cannot be
  checked from here: it is refused, saying which file to delete once that job has ended
  (``flock`` over a network filesystem is not relied upon). SIGTERM (a Slurm preemption or time limit)
  ends a run like Ctrl-C (:mod:`lqs_megatron.cli`), so the lock file is removed then too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import glob
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import check_replaceable, clean_stale_temps, pid_alive
from lqs_megatron.utils.integrity import disk_errors

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class OutputLocked(LQSError):
    """Another live run holds the output's lock; ``holder`` is its lock record."""

    def __init__(self, path: str, holder: dict):
        self.path, self.holder = path, holder
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started") if k in holder) or "just started"
        cmd = holder.get("command")
        host = holder.get("host")
        if host is not None and host != socket.gethostname():
            hint = (
                f"this host cannot tell whether that run still lives; once it has ended (check pid "
                f"{holder.get('pid')} on {host}, or its job in the scheduler), delete {path} and rerun"
            )
        else:
            hint = f"if that run is gone, delete {path}"
        super().__init__(
            f"{path} is locked by another run ({who}{'; command: ' + cmd if cmd else ''}); wait for it to finish, "
            f"or choose another --out ({hint})"
        )


def lock_path(out: str | os.PathLike) -> str:
    """``<real path of out>.lock`` (symlinks resolved, a trailing slash of a directory ignored)."""
    return os.path.realpath(os.fspath(out)) + LOCK_SUFFIX


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


# What an output PREFIX writes beside PREFIX (each writer a subset: datasets, their sidecars, `lqs report`).
PREFIX_FILES = (".bin", ".idx", ".stats.json", ".meta.jsonl", ".chunk-boundaries.bin", ".scores.npy", ".indices.npy")
PREFIX_FILES += (".view.json",)
PREFIX_FILES += (".txt", ".json", ".png")

Inputs = Mapping[str, "str | os.PathLike | Iterable[str | os.PathLike] | None"]


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _stats_corpus(prefix: str) -> list[str]:
    """The raw input files a dataset's ``PREFIX.stats.json`` names (relative ones as given and beside it)."""
    try:
        with open(prefix + ".stats.json") as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(stats, dict):
        return []
    names = stats.get("files")
    names = names if isinstance(names, list) else []
    found = []
    for name in names:
        if not isinstance(name, str):
            continue
        for cand in (name, os.path.join(os.path.dirname(prefix), name)):
            if os.path.exists(cand):
                found.append(cand)
    return found


def _input_paths(path: str | os.PathLike) -> list[str]:
    """The real paths behind one input: the path itself when it exists (a glob pattern: its matches), a dataset
    prefix's ``.bin``/``.idx`` and the raw corpus its stats name."""
    path = os.fspath(path)
    out = [path] if os.path.lexists(path) else sorted(glob.glob(path)) if glob.has_magic(path) else []
    if os.path.exists(path + ".idx") or os.path.exists(path + ".bin"):
        out += [p for p in (path + ".bin", path + ".idx", path + ".stats.json") if os.path.exists(p)]
        out += _stats_corpus(path)
    elif os.path.exists(path + ".view.json"):  # a view reads its own files and its source dataset
        out += [p for p in (path + ".view.json", path + ".indices.npy", path + ".stats.json") if os.path.exists(p)]
        source = _view_source(path)
        if source is not None:
            return [_real(p) for p in out] + _input_paths(source)
    return [_real(p) for p in out]


def _view_source(prefix: str) -> str | None:
    """The source prefix a view ``PREFIX.view.json`` names (None when unreadable: opening it reports that)."""
    try:
        with open(prefix + ".view.json") as f:
            source = json.load(f).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) and source != prefix else None


def check_output(
    out: str | os.PathLike,
    command: str,
    inputs: Inputs = (),
    kind: str = "prefix",
    known: Iterable[str] | None = None,
    flag: str = "--out",
) -> None:
    """The output rule's checks (see the module docstring); raise one-line :class:`LQSError` on a violation.

    ``kind``: ``"prefix"`` (a dataset ``OUT.bin``/``.idx`` and the sidecars :data:`PREFIX_FILES`), ``"file"``
    (``out`` and, for a ``.jsonl``, its ``.scores.npy``/``.indices.npy`` sidecars) or ``"dir"``. ``inputs``:
    ``{flag: path or paths}`` of what the run reads. ``known``: for a directory replaced as a whole, the glob
    patterns of the entries of an earlier output of ``command`` (recognised without a marker); ``None`` when
    the run writes inside ``out`` rather than replacing it."""
    raw = os.fspath(out)
    noun = "file" if kind == "file" else "dataset prefix"
    if raw == "" or (kind != "dir" and (raw.endswith(os.sep) or os.path.basename(raw) in ("", ".", ".."))):
        raise LQSError(f"{flag} {raw!r} is a directory, not a {noun} name (e.g. {flag} ./data/name)")
    real = _real(raw)
    if kind != "dir" and os.path.isdir(real):
        raise LQSError(f"{flag} {raw} is a directory; give a {noun} inside it (e.g. {flag} {raw}/name)")
    if kind == "dir" and _within(_real(os.getcwd()), real) and known is not None:
        raise LQSError(f"{flag} {raw} is the current directory (or above it): choose a directory to write to")
    if kind == "prefix":
        written = [real + ext for ext in PREFIX_FILES]
    elif kind == "file" and real.endswith(".jsonl"):
        written = [real, real[: -len(".jsonl")] + ".scores.npy", real[: -len(".jsonl")] + ".indices.npy"]
    else:
        written = [real]
    for in_flag, value in dict(inputs).items():
        if value is None:
            continue
        for given in [value] if isinstance(value, (str, os.PathLike)) else list(value):
            given = os.fspath(given)
            if kind == "prefix" and _real(given) == real:
                raise LQSError(f"{flag} {raw} is the input dataset of {in_flag}; choose another {flag}")
            source = _view_source(given) if kind == "prefix" and os.path.exists(given + ".view.json") else None
            if source is not None and _real(source) == real:
                raise LQSError(f"{flag} {raw} is the source of the view {given} ({in_flag}); choose another {flag}")
            for src in _input_paths(given):
                for dst in written:
                    if dst == src:
                        what = f"is the input {src}"
                    elif _within(dst, src):
                        what = f"is inside the input {src}"
                    elif kind == "dir" and _within(src, dst):
                        what = f"contains the input {src} (replacing or writing it could delete that input)"
                    else:
                        continue
                    source = "" if src == _real(given) else f" {given}"
                    raise LQSError(f"{flag} {raw} {what} (read through {in_flag}{source}); choose another {flag}")
    if known is not None:
        check_replaceable(raw, command, known, flag)


@contextlib.contextmanager
def output_lock(
    out: str | os.PathLike,
    command: str | None = None,
    enabled: bool = True,
    *,
    step: str | None = None,
    inputs: Inputs = (),
    kind: str = "prefix",
    known: Iterable[str] | None = None,
) -> Iterator[str | None]:
    """Hold ``<out>.lock`` for the body; yield its path (``None`` when ``enabled`` is false, e.g. rank > 0).

    ``command`` is recorded for the error a second run prints (default: this process's argv). With ``step``
    (the ``lqs`` subcommand) the whole output rule applies: :func:`check_output` with ``inputs``, ``kind``
    and ``known`` once the lock is held, the stale temporaries of this output removed, and a full or
    read-only disk met in the body reported as one line.
    """
    if not enabled:
        yield None
        return
    path = lock_path(out)
    fd = _acquire(path, command)
    try:
        if step is None:
            yield path
        else:
            check_output(out, step, inputs, kind, known)
            real = os.path.realpath(os.fspath(out))
            clean_stale_temps([real] + ([real + ext for ext in PREFIX_FILES] if kind == "prefix" else []))
            with disk_errors(os.path.dirname(real) if kind != "dir" else real, "the output"):
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
def output_lock_on_main(out: str | os.PathLike, dims, command: str | None = None, **rule) -> Iterator[str | None]:
    """:func:`output_lock` taken by global rank 0 of a (possibly distributed) job; every rank learns the
    outcome, so when the lock is refused **every** rank raises (none is left waiting in a collective).

    ``dims``: a :class:`~lqs_megatron.parallel.dims.ParallelDims` (collective: every rank calls this); ``rule``:
    the output rule's keywords of :func:`output_lock` (``step``, ``inputs``, ``kind``, ``known``)."""
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        path = None
        if dims.is_main:
            try:
                path = stack.enter_context(output_lock(out, command, **rule))
            except (LQSError, OSError) as e:
                failure = e
        msg = dims.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if msg is not None:
            raise LQSError(msg)
        yield path
