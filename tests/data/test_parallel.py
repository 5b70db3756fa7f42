"""ordered_map: input order whatever the workers, bounded read-ahead, errors in order, dead workers."""

import os
import random
import time

import pytest

from lqs_megatron.data.preprocess.pool import ordered_map
from lqs_megatron.errors import LQSError


def _slow_square(x):
    time.sleep(random.random() * 0.01)
    return x * x


def _fail_on(x):
    if x in (7, 12):
        raise LQSError(f"bad task {x}")
    return x


def _die_on_5(x):
    if x == 5:
        os._exit(3)
    return x


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order(workers):
    assert list(ordered_map(_slow_square, range(40), workers)) == [x * x for x in range(40)]


def test_read_ahead_is_bounded():
    consumed = []

    def tasks():
        for i in range(60):
            consumed.append(i)
            yield i

    for k, _ in enumerate(ordered_map(_slow_square, tasks(), workers=2, max_in_flight=4)):
        assert len(consumed) <= k + 1 + 4  # never more than max_in_flight tasks ahead of the consumer


@pytest.mark.parametrize("workers", [0, 2])
def test_first_failure_in_input_order_is_raised(workers):
    got = []
    with pytest.raises(LQSError, match="bad task 7"):
        for x in ordered_map(_fail_on, range(20), workers):
            got.append(x)
    assert got == list(range(7))


def test_a_dead_worker_is_an_error_not_a_hang():
    with pytest.raises(LQSError, match="died"):
        list(ordered_map(_die_on_5, range(10), workers=2))


_SIGTERM_SCRIPT = """
import signal, sys
from lqs_megatron.data.preprocess.pool import ordered_map

def on_term(signum, frame):  # a Python-level handler, as `lqs` installs one; forked workers inherit it
    raise KeyboardInterrupt

def mask_term_in_main_thread():  # the kernel must deliver SIGTERM to another thread of the worker
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

def fail(x):
    raise ValueError("bad task")

signal.signal(signal.SIGTERM, on_term)
try:
    list(ordered_map(fail, range(4), 2, initializer=mask_term_in_main_thread))
except ValueError:
    print("raised")
"""


def test_a_failure_ends_workers_whichever_thread_gets_sigterm(tmp_path):
    """Workers are stopped with SIGTERM when a task fails. A worker that kept the parent's Python handler
    never ran it when the signal reached a thread other than the main one (blocked on the task queue),
    and the parent waited on it forever (a CI hang in tokenize-target). Here the signal can only reach
    those other threads."""
    import subprocess
    import sys

    script = tmp_path / "s.py"
    script.write_text(_SIGTERM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "raised", proc.stderr
