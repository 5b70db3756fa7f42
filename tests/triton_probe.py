"""Can this machine's Triton interpreter run the project's kernels? (tests/conftest.py asks once.)

The probe is a small kernel with what the kernels use and old interpreters break on: a loop bounded
by a runtime argument, masked loads, reductions, an online log-sum-exp. triton 3.6.0's interpreter
fails it under torch 2.13 (``only 0-dimensional arrays can be converted to Python scalars``);
3.7.1 (the one torch 2.13's CUDA wheel pins) and 3.8.0 pass.
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._triton import HAVE_TRITON, tl, triton


@triton.jit
def _probe_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    m = tl.full((), -1.0e30, tl.float32)
    s = tl.zeros((), tl.float32)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * n + cols, mask=cols < n, other=-1.0e30)
        new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - new) + tl.sum(tl.exp(x - new), axis=0)
        m = new
    tl.store(out_ptr + row, m + tl.log(s))


def interpreter_problem() -> str | None:
    """Why the Triton kernels cannot run here on the CPU (None: they can)."""
    if not HAVE_TRITON:
        return "triton is not installed (the CPU torch wheel does not bring it: pip install 'triton>=3.7')"
    x = torch.randn(3, 13, generator=torch.Generator().manual_seed(0))
    out = torch.empty(3)
    try:
        _probe_kernel[(3,)](x, out, 13, BLOCK=4)
    except Exception as e:  # any failure of the interpreter means the kernels cannot be tested here
        return (
            f"the interpreter of triton {triton.__version__} cannot run the kernels with torch "
            f"{torch.__version__} ({type(e).__name__}: {e}); triton >= 3.7 can"
        )
    if not torch.allclose(out, torch.logsumexp(x, 1)):
        return f"the interpreter of triton {triton.__version__} computes wrong results with torch {torch.__version__}"
    return None
