"""Test helpers shared by every test module: numerical comparison, CLI runs, gloo spawns."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(actual, expected) -> float:
    """``|a - e| / |e|`` over the whole tensor (Frobenius), guarded against ``e == 0``."""
    a = torch.as_tensor(actual).double()
    e = torch.as_tensor(expected).double()
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def assert_close(actual, expected, rtol: float, atol: float = 0.0, name: str = "", k: int = 5) -> None:
    """``torch.testing``-style check that prints the ``k`` worst elements on failure."""
    a = torch.as_tensor(actual).double().cpu()
    e = torch.as_tensor(expected).double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bad.any():
        flat = (diff - rtol * e.abs()).flatten()
        worst = torch.topk(flat, min(k, flat.numel())).indices
        rows = "\n".join(
            f"  at {np.unravel_index(int(i), a.shape)}: got {a.flatten()[i]:.8g}, expected {e.flatten()[i]:.8g}"
            for i in worst
        )
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (rtol={rtol}, atol={atol}); "
            f"relative error {rel_err(a, e):.3g}; worst:\n{rows}"
        )


def run_lqs(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None, **kw):
    """Run ``lqs ARGS`` in a subprocess (``python -m lqs_megatron``); return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "lqs_megatron", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lqs {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _spawn_entry(rank: int, fn: Callable, world_size: int, init_file: str, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # Leave together: every rank past its last collective before any rank shuts its gloo pairs down
        # (destroy_process_group) and exits; without it the first rank to return closed its connections
        # while the other could still be completing the last collective on them.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes (``file://`` init, no ports).

    ``fn`` must be a module-level function; assertions inside it fail the test.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_spawn_entry, args=(fn, world_size, os.path.join(d, "init"), args), nprocs=world_size, join=True)
