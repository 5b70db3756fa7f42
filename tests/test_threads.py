"""torch's intra-op threads on the CPU (lqs_megatron/utils/threads.py): the cores free, the user's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import lqs_megatron.utils.threads as threads
from tests.utils import REPO


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: ``cores`` in the affinity and in all, ``running`` runnable tasks in /proc/loadavg."""

    def set_machine(cores: int, running: int, local_world: int | None = None):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        (tmp_path / "loadavg").write_text(f"5.01 4.00 3.00 {running}/321 4242\n")
        monkeypatch.setattr(threads, "LOADAVG", str(tmp_path / "loadavg"))
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.AUTO_ENV, raising=False)
    return set_machine


def test_default_is_the_cores_free_now(machine):
    """Each fresh (cores, runnable tasks, processes per node): the count is this process's share of the cores,
    less the tasks running besides it, at least 1 (the formula of the docstring, spelled out case by case)."""
    rng = np.random.default_rng()
    for _ in range(50):
        cores, running, world = int(rng.integers(1, 65)), int(rng.integers(1, 80)), int(rng.choice([1, 1, 2, 4]))
        machine(cores, running, world)
        share = max(1, cores // world)
        others = running - 1  # the reading process itself is one of the runnable tasks
        expected = share if others == 0 else max(1, min(share, cores - others))
        assert threads.default_threads() == expected, (cores, running, world)
    machine(2, 1)
    assert threads.default_threads() == 2  # a quiet 2-core machine: both cores
    machine(2, 7)
    assert threads.default_threads() == 1  # load 6 besides: one thread, not two fighting for slices


def test_flag_beats_user_env_beats_the_default(machine, monkeypatch):
    machine(8, 4)  # 3 running elsewhere: 5 free
    assert threads.configure_threads() == 5 and os.environ["OMP_NUM_THREADS"] == "5"
    machine(8, 7)  # a subprocess (a pipeline step) that inherited the derived count derives its own
    assert threads.configure_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's: kept
    monkeypatch.delenv(threads.AUTO_ENV)
    assert threads.configure_threads() is None and os.environ["OMP_NUM_THREADS"] == "3"
    assert threads.configure_threads(6) == 6 and os.environ["OMP_NUM_THREADS"] == "6"  # --threads
    assert threads.AUTO_ENV not in os.environ


def test_lqs_sets_torch_threads_before_torch_starts():
    """The count reaches torch in a fresh process, and ``lqs --threads N`` reaches the count."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.AUTO_ENV)}
    code = "from lqs_megatron.utils.threads import configure_threads as c; n = c()\n"
    code += "import torch; print(n, torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    n, torch_threads = map(int, out.stdout.split())
    assert n == torch_threads and 1 <= n <= threads.affinity_cores()
    k = int(np.random.default_rng().integers(2, 9))
    argv = ["--log-level", "DEBUG", "--threads", str(k), "export-hf", "--checkpoint", "/nonexistent", "--out", "x"]
    cli = subprocess.run(
        [sys.executable, "-m", "lqs_megatron", *argv], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert f"intra-op threads: {k} (--threads)" in cli.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "lqs_megatron", "--threads", "0", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--threads" in bad.stderr and "Traceback" not in bad.stderr
