"""Every ``@triton.jit`` kernel compiles for A100 (sm_80) and H100 (sm_90) at the launches its launcher
picks for the papers' shapes, and fits the target's shared memory: no GPU needed (``tests/kernels/aot.py``).

One test per (kernel, target). A kernel found in ``lqs_megatron/kernels`` that no launch at the
papers' shapes uses fails its test: give it a ``*_launch`` function and add it to
``aot.paper_launches``. Targets the installed Triton cannot compile for are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.kernels import aot
from tests.utils import REPO

pytest.importorskip("triton", reason="triton is not installed: nothing to compile")
pytestmark = pytest.mark.triton_compile


def _kernel_names() -> list[str]:
    return sorted(aot.discover_kernels())


@pytest.fixture(scope="module")
def compiled() -> dict:
    """All compiles, once, in a child without ``TRITON_INTERPRET`` (the conftest sets it for the CPU tests)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.aot"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_kernel_is_found():
    """The discovery walks the real modules: the kernels known today are all there."""
    names = _kernel_names()
    for k in ("per_example_loss._row_lse_kernel", "linear_stats._linear_direct_kernel", "norm_stats._norm_kernel"):
        assert k in names, names
    assert len(names) >= 7


@pytest.mark.parametrize("target", sorted(aot.TARGETS))
@pytest.mark.parametrize("kernel", _kernel_names())
def test_kernel_compiles_and_fits(compiled, kernel, target):
    if target in compiled["skipped"]:
        pytest.skip(compiled["skipped"][target])
    assert kernel in compiled["kernels"], f"{kernel} not found by the compiling process"
    rows = [r for r in compiled["results"] if r["kernel"] == kernel and r["target"] == target]
    assert rows, (
        f"{kernel} has no launch configuration at the papers' shapes: give it a *_launch function and "
        "add it to tests/kernels/aot.py paper_launches"
    )
    failed = [
        f"{r['example']} {r['constexprs']} {r['options']} ({r['hints']}): {r['error']}" for r in rows if r["error"]
    ]
    assert not failed, "\n".join(failed)
    limit = aot.TARGETS[target]["smem"]
    over = [f"{r['example']} {r['constexprs']}: {r['shared']} B > {limit} B" for r in rows if r["shared"] > limit]
    assert not over, f"{kernel} exceeds {aot.TARGETS[target]['gpu']} shared memory:\n" + "\n".join(over)
