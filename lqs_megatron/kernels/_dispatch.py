"""Backend choice and numeric helpers shared by the kernel modules.

Every kernel function takes ``backend="auto" | "triton" | "torch"``:

- ``"auto"``: the Triton kernels for CUDA tensors of 16/32-bit floats, the torch reference
  otherwise (CPU tensors, float64 anywhere: the Triton kernels accumulate in float32);
- ``"triton"``: force the Triton kernels (on CPU tensors this needs ``TRITON_INTERPRET=1``
  set before triton is imported, as ``tests/conftest.py`` does);
- ``"torch"``: force the plain torch reference.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Resolve ``backend`` for these tensors: True for the Triton kernels, False for the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ts = [t for t in tensors if t is not None]
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in ts)
    if backend == "auto":
        from lqs_megatron.kernels._triton import HAVE_TRITON

        return HAVE_TRITON and on_cuda and all(t.dtype != torch.float64 for t in ts if t.is_floating_point())
    from lqs_megatron.kernels._triton import HAVE_TRITON

    if not HAVE_TRITON:
        raise ValueError('backend="triton" needs the triton package (pip install triton)')
    if not on_cuda and not interpreting():
        raise ValueError('backend="triton" on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported')
    return True


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 when any input is float64, else float32 (bf16/fp16/fp32 inputs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def mm_acc(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``a @ b`` returned in ``dtype`` (float32 or float64) with no rounding to a 16-bit output.

    16-bit CUDA inputs use cuBLAS's float32 output (``torch.mm(..., out_dtype=)``) so the tensor
    cores run at full speed; elsewhere the inputs are upcast.
    """
    if a.dtype == dtype and b.dtype == dtype:
        return a @ b
    if a.is_cuda and dtype == torch.float32 and a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):  # older torch: no float32-output GEMM
            pass
    return a.to(dtype) @ b.to(dtype)


def tl_dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: IEEE float32 (not TF32) so float32 statistics keep 1e-4 accuracy."""
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast_in_kernel(dtype: torch.dtype, interpret: bool | None = None) -> bool:
    """Whether kernels must upcast 16-bit tiles before ``tl.dot``.

    On a GPU, bf16/fp16 tiles go to the tensor cores as they are (products are exact in the
    float32 accumulator). Triton 3.8's CPU interpreter returns garbage for ``tl.dot`` on bf16
    tiles, so under the interpreter (``interpret``, default: ``TRITON_INTERPRET``) they are upcast first.
    """
    interpret = interpreting() if interpret is None else interpret
    return interpret and dtype in (torch.bfloat16, torch.float16)
