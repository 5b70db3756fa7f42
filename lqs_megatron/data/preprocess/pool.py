"""An ordered, bounded parallel map over worker processes (the engine of the tokenizers).

:func:`ordered_map` applies ``fn`` to a stream of tasks in ``workers`` processes and yields
the results *in input order*, whatever the number of workers, so outputs are
deterministic. At most ``max_in_flight`` tasks are submitted and not yet consumed, so
memory stays flat however long the stream is (unlike ``multiprocessing.Pool.imap``, whose
feeder thread reads the whole input ahead). ``workers=0`` runs everything in the calling
process.

Workers are forked where the platform allows (no re-import, the parent's loaded
tokenizer is shared copy-on-write), spawned elsewhere. A worker that dies is an error,
not a hang; workers exit on their own when the parent dies (even by SIGKILL).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lqs_megatron.errors import LQSError

_POLL_S = 1.0


class _Failure:
    """An exception raised by ``fn`` in a worker, carried back to the parent."""

    def __init__(self, exc: BaseException):
        try:
            import pickle

            pickle.dumps(exc)
            self.exc: BaseException | None = exc
        except Exception:
            self.exc = None
        self.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def reraise(self):
        if self.exc is not None:
            raise self.exc
        raise RuntimeError(f"a worker process failed:\n{self.text}")


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: end this worker at once when its parent is gone (even if it was SIGKILLed).

    ``os._exit``, because a normal exit would wait for queue feeder threads blocked on
    pipes nobody reads any more.
    """
    while True:
        time.sleep(_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(fn, initializer, initargs, tasks, results, parent_pid: int) -> None:
    # SIGTERM kills a worker outright, before any thread of its own starts. The parent's handler (inherited
    # through fork) runs only in the main thread, and the kernel may deliver the signal to any thread:
    # delivered to the watchdog or a queue feeder while the main thread waits on the task queue, it was
    # never acted on and the parent's terminate() + join() waited forever (seen in CI).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as e:  # reported with the first task
        init_error: _Failure | None = _Failure(e)
    else:
        init_error = None
    while True:
        item = tasks.get()
        if item is None:
            return
        seq, task = item
        if init_error is not None:
            results.put((seq, init_error))
            continue
        try:
            out = fn(task)
        except BaseException as e:
            out = _Failure(e)
        results.put((seq, out))


def _context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def ordered_map(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    max_in_flight: int | None = None,
    threads: bool = False,
) -> Iterator[Any]:
    """Yield ``fn(task)`` for each task, in order, computed by ``workers`` processes.

    An exception raised by ``fn`` is re-raised here when its task's turn comes (so the
    first failing task *in input order* is the one reported). ``initializer(*initargs)``
    runs once in each worker (or once here when ``workers == 0``). ``threads=True`` runs
    ``fn`` in ``workers`` threads of this process instead: for work that releases the GIL
    (native code), which then needs no pickling of tasks and results between processes.
    """
    if workers < 0:
        raise LQSError(f"--workers must be >= 0, got {workers}")
    if workers == 0:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield fn(task)
        return
    max_in_flight = max_in_flight or 4 * workers + 4
    if threads:
        yield from _thread_map(fn, tasks, workers, initializer, initargs, max_in_flight)
        return
    ctx = _context()
    task_q, result_q = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(fn, initializer, initargs, task_q, result_q, os.getpid()),
            daemon=True,
            name=f"lqs-worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    it = iter(tasks)
    pending: dict[int, Any] = {}
    submitted = done = 0
    exhausted = finished = False
    try:
        while True:
            while not exhausted and submitted - done < max_in_flight:
                try:
                    task = next(it)
                except StopIteration:
                    exhausted = True
                    break
                task_q.put((submitted, task))
                submitted += 1
            if exhausted and done == submitted:
                finished = True
                return
            while done not in pending:
                try:
                    seq, out = result_q.get(timeout=_POLL_S)
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode is not None]
                    if dead:
                        raise LQSError(
                            f"worker process {dead[0].name} died (exit code {dead[0].exitcode}); "
                            "out of memory? try fewer --workers"
                        ) from None
                    continue
                pending[seq] = out
            out = pending.pop(done)
            done += 1
            if isinstance(out, _Failure):
                out.reraise()
            yield out
    finally:
        if finished:  # let the workers exit on their own
            for _ in procs:
                task_q.put(None)
        for p in procs:
            p.join(timeout=2 * _POLL_S if finished else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10 * _POLL_S)
            if p.is_alive():  # never wait on a worker forever
                p.kill()
                p.join()
        task_q.close()
        result_q.close()
        task_q.cancel_join_thread()
        result_q.cancel_join_thread()


def _thread_map(fn, tasks, workers: int, initializer, initargs: tuple, max_in_flight: int) -> Iterator[Any]:
    """:func:`ordered_map` in ``workers`` threads: at most ``max_in_flight`` tasks submitted and not yet consumed."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if initializer is not None:
        initializer(*initargs)
    futures: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="lqs-worker") as pool:
        try:
            for task in tasks:
                futures.append(pool.submit(fn, task))
                if len(futures) >= max_in_flight:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
        finally:
            for f in futures:
                f.cancel()
