"""``triton`` and ``triton.language`` when installed, else stand-ins that let the kernel
modules import (their ``@triton.jit`` functions then refuse to launch).

CUDA builds of torch bring their own Triton; the CPU build does not, and the CPU path
never needs it (the torch references run there). Forcing ``backend="triton"`` without
Triton is a clear error raised by :func:`lqs_megatron.kernels._dispatch.use_triton`.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised in the CPU-only install
    HAVE_TRITON = False

    class _Language:
        """Attribute access for annotations such as ``tl.constexpr`` at definition time."""

        def __getattr__(self, name: str) -> object:
            return object

    class _Kernel:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            raise RuntimeError("Triton is not installed; the torch reference is used on this machine")

    class _Triton:
        language = _Language()

        @staticmethod
        def jit(fn=None, **kwargs):
            return _Kernel(fn) if fn is not None else _Kernel

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(int(n) - 1, 0).bit_length()

    triton = _Triton()
    tl = triton.language

__all__ = ["HAVE_TRITON", "tl", "triton"]
