"""torch's intra-op threads on the CPU: a default that follows the cores actually free.

torch (OpenMP) starts one thread per core by default. When other processes keep those cores
busy, each parallel region waits for its slowest, descheduled thread, and the run slows far
more than in proportion to the load (the demo's annotation: 29 minutes instead of about one
with load 5-7 on 2 cores; docs/benchmarks.md, "Threads on a loaded machine"). So ``lqs``
decides the count once, at start-up, before torch is imported, in this order:

1. ``lqs --threads N COMMAND``: N (also passed on to the steps of ``lqs pipeline``);
2. ``OMP_NUM_THREADS`` set by the user: kept (torch reads it);
3. otherwise the process's share of the cores it may run on (its CPU affinity, divided among
   the ``LOCAL_WORLD_SIZE`` processes of a torchrun node) less the cores other processes are
   using right now (runnable tasks of ``/proc/loadavg``, the median of a few samples), at
   least 1. It is written to ``OMP_NUM_THREADS``; ``LQS_THREADS_AUTO`` marks it as derived, so
   that the subprocesses (the pipeline's steps) derive their own instead of inheriting it.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time

logger = logging.getLogger(__name__)

OMP_ENV = "OMP_NUM_THREADS"
LOADAVG = "/proc/loadavg"
AUTO_ENV = "LQS_THREADS_AUTO"
"""Set to the derived count when ``lqs`` chose ``OMP_NUM_THREADS`` itself."""


def affinity_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def running_elsewhere(samples: int = 5, interval_s: float = 0.02) -> float:
    """Tasks runnable right now besides this one (median of ``samples`` reads of ``/proc/loadavg``);
    0 where the file does not exist."""
    counts = []
    for k in range(samples):
        try:
            with open(LOADAVG) as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(max(running - 1, 0))
        if k + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def default_threads(busy: float | None = None) -> int:
    """This process's share of the affinity cores, less the cores busy elsewhere (``busy``; measured when None)."""
    share = max(1, affinity_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    busy = running_elsewhere() if busy is None else busy
    free = (os.cpu_count() or share) - busy
    return int(max(1, min(share, free)))


def configure_threads(threads: int | None = None) -> int | None:
    """Set ``OMP_NUM_THREADS`` for this process (call before torch is imported): ``threads`` when given,
    the user's ``OMP_NUM_THREADS`` when set, else :func:`default_threads`. Returns the count it set
    (None when the user's is kept)."""
    if threads is not None:
        os.environ.pop(AUTO_ENV, None)
        how = "--threads"
    else:
        user = os.environ.get(OMP_ENV)
        if user and os.environ.get(AUTO_ENV) != user:
            logger.debug("intra-op threads: %s (OMP_NUM_THREADS)", user)
            return None
        threads = default_threads()
        os.environ[AUTO_ENV] = str(threads)
        how = f"the cores free of {affinity_cores()}; --threads or OMP_NUM_THREADS overrides"
    os.environ[OMP_ENV] = str(threads)
    if "torch" in sys.modules:  # imported already (lqs called in-process): too late for the variable
        sys.modules["torch"].set_num_threads(threads)
    logger.debug("intra-op threads: %d (%s)", threads, how)
    return threads
