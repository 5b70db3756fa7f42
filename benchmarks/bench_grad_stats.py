"""Per-example ``<G_n, Lambda>`` and ``|G_n|^2`` of one linear layer: every way, against the baselines.

Rows per shape ``(B, T, d_in, d_out)``:

- ``materialised G_n``: the whole batch's per-example gradients ``[B, d_out, d_in]`` (one bmm),
  then the two reductions: what per-example-gradient code does (the reference of the speed-ups);
- ``wgrad GEMM (budget)``: the batch weight-gradient GEMM ``D^T A`` that the LQS engine skips;
  statistics at about this cost fit the goal of 1.15x one plain forward+backward;
- ``torch direct`` / ``torch ghost``: the torch reference (chunked over examples) each way;
  ``torch auto`` is the one :func:`choose_method` picks (the contract's rule ``T^2 < d_in d_out``);
- on CUDA: ``triton direct`` / ``triton ghost`` (fused kernels).

    python benchmarks/bench_grad_stats.py              # CPU shapes, or GPU shapes on a GPU
    python benchmarks/bench_grad_stats.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import os
import sys

# this folder goes last on the path: a script here must never shadow a stdlib module
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import torch

from lqs_megatron.kernels.grad_stats import choose_method, grad_stats_linear

from _harness import Table, main_guard, parser

CPU_SHAPES = [(8, 64, 256, 256), (8, 128, 512, 512), (4, 256, 256, 256), (4, 512, 256, 256), (4, 128, 768, 3072)]
GPU_SHAPES = [(16, 1024, 768, 768), (16, 1024, 768, 3072), (16, 1024, 3072, 768), (64, 128, 2048, 2048),
              (8, 2048, 4096, 4096)]  # fmt: skip


def materialised(A, D, lam):
    G = torch.bmm(D.transpose(1, 2).float(), A.float())  # [B, d_out, d_in]
    return (G * lam).sum((1, 2)), G.square().sum((1, 2))


def bench_shape(table: Table, dev: torch.device, dtype: torch.dtype, B: int, T: int, d_in: int, d_out: int):
    case = f"B={B} T={T} d_in={d_in} d_out={d_out} (rule: {choose_method(T, d_in, d_out)})"
    A = torch.randn(B, T, d_in, device=dev, dtype=dtype)
    D = torch.randn(B, T, d_out, device=dev, dtype=dtype)
    lam = torch.randn(d_out, d_in, device=dev, dtype=torch.float32)
    A2, D2 = A.reshape(B * T, d_in), D.reshape(B * T, d_out)
    fns = {"materialised G_n": lambda: materialised(A, D, lam), "wgrad GEMM (budget)": lambda: D2.T @ A2}
    for backend in ("torch", "triton") if dev.type == "cuda" else ("torch",):
        for m in ("direct", "ghost"):
            fns[f"{backend} {m}"] = lambda m=m, b=backend: grad_stats_linear(A, D, lam, method=m, backend=b)
    table.case(case, fns)


def run(args):
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    table = Table(f"per-example linear-layer statistics ({dtype})", ["materialised G_n", "wgrad GEMM (budget)"], args)
    for shape in GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES:
        bench_shape(table, dev, dtype, *shape)
    table.finish()


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default=None, help="input dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    main_guard(run, p)
