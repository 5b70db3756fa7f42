"""Run a plan of steps, skipping the ones already done, resuming the first unfinished one.

A step is a public ``lqs`` command (run in a subprocess, under torchrun when it is a
distributed step and more than one process per node is asked for) or a small in-process
function. After a step succeeds the runner writes ``WORKDIR/.pipeline/NAME.json`` with the
step's *fingerprint*: a hash of its command and of the fingerprints of the steps it
consumes. On a rerun, a step whose marker matches and whose outputs all exist is reused;
any other step runs again — with its resume flag when it has one, so a step killed midway
continues from its own last checkpoint; a step whose inputs or flags changed starts afresh
(its old outputs are removed first). Each step's output goes to ``WORKDIR/logs/NAME.log``;
its progress lines (``done/total units, RATE, ETA ...``, or ``done units, RATE`` where the total
is not known, utils/progress.py) are relayed to the console as ``[ k/N] NAME  ...``, at most one every
``RELAY_SECONDS``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import save_json
from lqs_megatron.utils.progress import PROGRESS_SECONDS_ENV

logger = logging.getLogger(__name__)

RELAY_SECONDS = 10.0
"""Least seconds between two relayed progress lines of one step (and the steps' own log interval)."""
_LOG_PREFIX = re.compile(r"^(\d\d:\d\d:\d\d )?(\[rank\d+\] )?[A-Z]+ [\w.]+: ")
# Progress.status(): "12/20 steps, 1.6 s/step, ETA 0:13" or, without a total, "1200 docs, 45.1 docs/s"
_PROGRESS = re.compile(r", ETA \d+:\d\d|: \d+ \w+, [\d,.]+ (\w+/s|s/\w+)")


@dataclass
class Step:
    name: str
    """Unique name, also the marker and log file name."""
    argv: list[str] = field(default_factory=list)
    """``lqs`` arguments (subcommand first); empty for an in-process step."""
    outputs: list[str] = field(default_factory=list)
    """Paths that exist only once the step is complete."""
    after: list[str] = field(default_factory=list)
    """Names of the steps whose outputs this one reads."""
    distributed: bool = False
    """Launch under torchrun when ``nproc_per_node > 1``."""
    resume_flag: str | None = None
    """Flag added when rerunning an unfinished step (its own state continues)."""
    state: list[str] = field(default_factory=list)
    """Paths the step keeps between attempts (removed when its fingerprint changes)."""
    func: Callable[[], None] | None = None
    """In-process work instead of a command (``func_id`` names it in the fingerprint)."""
    func_id: str = ""
    inputs: list[str] = field(default_factory=list)
    """Raw input files read by the step (their size and mtime join the fingerprint, so an
    edited corpus reruns everything downstream)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Runner:
    def __init__(self, workdir: str | os.PathLike, nproc_per_node: int = 1, torchrun_args=()):
        self.workdir = Path(workdir)
        self.markers = self.workdir / ".pipeline"
        self.logs = self.workdir / "logs"
        self.nproc, self.torchrun_args = nproc_per_node, list(torchrun_args)
        self.fingerprints: dict[str, str] = {}
        self.timings: dict[str, dict] = {}

    def fingerprint(self, step: Step) -> str:
        missing = [a for a in step.after if a not in self.fingerprints]
        if missing:
            raise LQSError(f"pipeline step {step.name} runs before {', '.join(missing)}")
        stats = []
        for p in step.inputs:
            st = os.stat(p) if os.path.exists(p) else None
            stats.append([p, st.st_size, st.st_mtime_ns] if st else [p, None])
        blob = json.dumps([step.argv, step.func_id, stats, [self.fingerprints[a] for a in step.after]])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def command(self, step: Step, resume: bool) -> list[str]:
        argv = list(step.argv) + ([step.resume_flag] if resume and step.resume_flag else [])
        if step.distributed and self.nproc > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={self.nproc}",
                *self.torchrun_args,
                "-m",
                "lqs_megatron",
                *argv,
            ]
        return [sys.executable, "-m", "lqs_megatron", *argv]

    def _marker(self, step: Step) -> dict | None:
        path = self.markers / f"{step.name}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def run(self, steps: list[Step], echo: Callable[[str], None] = print) -> dict[str, dict]:
        self.markers.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise LQSError("pipeline plan has duplicate step names")
        width = max(len(n) for n in names)
        for k, step in enumerate(steps, 1):
            fp = self.fingerprint(step)
            self.fingerprints[step.name] = fp
            marker = self._marker(step)
            head = f"[{k:2d}/{len(steps)}] {step.name:<{width}}"
            if marker and marker.get("fingerprint") == fp and all(os.path.exists(p) for p in step.outputs):
                self.timings[step.name] = {"seconds": marker.get("seconds", 0.0), "reused": True}
                echo(f"{head}  reused ({marker.get('seconds', 0.0):.1f}s when run)")
                continue
            resume = marker is None  # never finished: let the step continue its own state
            if marker is not None:  # finished once with other inputs or flags: start afresh
                for p in step.outputs + step.state:
                    _remove(p)
                (self.markers / f"{step.name}.json").unlink(missing_ok=True)
            echo(f"{head}  running ...")
            t0 = time.time()
            self._execute(step, resume, lambda line, head=head: echo(f"{head}  {line}"))
            seconds = time.time() - t0
            lost = [p for p in step.outputs if not os.path.exists(p)]
            if lost:
                raise LQSError(f"pipeline step {step.name} finished but did not write {', '.join(lost)}")
            save_json(
                self.markers / f"{step.name}.json",
                {"fingerprint": fp, "seconds": seconds, "outputs": step.outputs, "argv": step.argv},
            )
            self.timings[step.name] = {"seconds": seconds, "reused": False}
            echo(f"{head}  done in {seconds:.1f}s")
        return self.timings

    def _execute(self, step: Step, resume: bool, relay: Callable[[str], None] = lambda line: None) -> None:
        logfile = self.logs / f"{step.name}.log"
        if step.func is not None:
            step.func()
            logfile.write_text(f"in-process step {step.func_id}\n")
            return
        cmd = self.command(step, resume)
        # progress bars go to the log file: refresh them rarely there; progress log lines as often as relayed
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "15"),
            PROGRESS_SECONDS_ENV: os.environ.get(PROGRESS_SECONDS_ENV, str(RELAY_SECONDS)),
        }
        lock = threading.Lock()
        with open(logfile, "w") as out, open(self.logs / f"{step.name}.stdout", "w") as stdout:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                preexec_fn=_die_with_parent,
            )
            errors = threading.Thread(target=_copy_stderr, args=(proc.stderr, out, lock, relay), daemon=True)
            errors.start()
            try:
                for line in proc.stdout:
                    stdout.write(line)
                    with lock:
                        out.write(line)
                rc = proc.wait()
                errors.join()
            except BaseException:
                proc.terminate()  # the step ends as on SIGTERM: it releases its output lock (utils/lock.py)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        if rc != 0:
            tail = "".join(logfile.read_text().splitlines(keepends=True)[-25:])
            raise LQSError(f"pipeline step {step.name} failed (exit {rc}); last lines of {logfile}:\n{tail}")

    def stdout_of(self, name: str) -> str:
        return (self.logs / f"{name}.stdout").read_text()


def _copy_stderr(stream, out, lock: threading.Lock, relay: Callable[[str], None]) -> None:
    """Copy a step's stderr into its log; relay its progress lines, one per ``RELAY_SECONDS``."""
    last = -math.inf
    for line in stream:
        with lock:
            out.write(line)
            out.flush()
        if _PROGRESS.search(line) and time.monotonic() - last >= RELAY_SECONDS:
            last = time.monotonic()
            relay(_LOG_PREFIX.sub("", line.strip()))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
