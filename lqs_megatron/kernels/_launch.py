"""A kernel launch as data: what a launcher picks (grid, block sizes, warps, stages) for given shapes.

Every launcher builds its :class:`Launch` with a pure function of the problem's shapes and dtypes
(no tensors: ``*_launch(...)`` in each op's module), then calls it on its tensors. The same functions
feed the ahead-of-time compile tests (``tests/kernels/test_triton_compile.py``), which compile every
kernel for sm_80 and sm_90 with exactly these configurations and check their shared memory. The
argument types a launch declares (:attr:`Launch.pointers`) are checked against the tensors it is
called with whenever the kernels run under ``TRITON_INTERPRET=1`` (the CPU tests), so the compiled
signature cannot drift from what the launcher passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lqs_megatron.kernels._dispatch import interpreting
from lqs_megatron.kernels._triton import triton

TRITON_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "i1",
}


def block(dim: int, cap: int = 64) -> int:
    """Power-of-two block for a dimension: at least 16 (``tl.dot``'s minimum), at most ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def kernel_arg_names(kernel: Any) -> list[str]:
    """Parameter names of a ``@triton.jit`` function (compiled or interpreted)."""
    return list(kernel.arg_names)


@dataclass(frozen=True)
class Launch:
    """One launch of a ``@triton.jit`` ``kernel``.

    ``pointers`` maps each tensor argument to its dtype; every other argument that is not in
    ``constexprs`` is a 32-bit integer scalar. ``num_stages=None`` keeps Triton's default.
    """

    kernel: Any
    grid: tuple[int, ...]
    constexprs: dict[str, Any]
    pointers: dict[str, torch.dtype]
    num_warps: int = 4
    num_stages: int | None = None
    scalars: dict[str, str] = field(default_factory=dict)
    """Types of scalar arguments other than ``i32`` (none so far)."""

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def signature(self) -> dict[str, str]:
        """Triton's signature of this launch: ``{arg: "*bf16" | "i32" | "constexpr" | ...}``."""
        sig = {}
        for n in kernel_arg_names(self.kernel):
            if n in self.constexprs:
                sig[n] = "constexpr"
            elif n in self.pointers:
                sig[n] = "*" + TRITON_TYPES[self.pointers[n]]
            else:
                sig[n] = self.scalars.get(n, "i32")
        return sig

    def options(self) -> dict[str, int]:
        """Compile options (``num_warps``, and ``num_stages`` when set)."""
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts

    def check(self, args: tuple) -> None:
        """Raise if ``args`` do not match the declared signature (tensor dtypes, scalars)."""
        names = [n for n in kernel_arg_names(self.kernel) if n not in self.constexprs]
        if len(args) != len(names):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(names)} parameters {names}")
        for n, a in zip(names, args):
            if n in self.pointers:
                if not isinstance(a, torch.Tensor) or a.dtype != self.pointers[n]:
                    got = a.dtype if isinstance(a, torch.Tensor) else type(a).__name__
                    raise TypeError(f"{self.name}: argument {n} is {got}, the launch declares {self.pointers[n]}")
            elif isinstance(a, torch.Tensor) or not isinstance(a, int):
                raise TypeError(f"{self.name}: argument {n} must be an int scalar, got {type(a).__name__}")

    def __call__(self, *args) -> None:
        """Launch on ``args`` (the kernel's non-constexpr arguments, in order)."""
        if interpreting():
            self.check(args)
        self.kernel[self.grid](*args, **self.constexprs, **self.options())
