"""Per-example ``<G_n, Lambda>`` and ``|G_n|^2`` of a layer's weight: every way, against the baselines.

The three statistics ops: linear layers (the main table), embeddings and norm weights (one case each).
Rows per linear shape ``(B, T, d_in, d_out)``:

- ``materialised G_n``: the whole batch's per-example gradients ``[B, d_out, d_in]`` (one bmm),
  then the two reductions: what per-example-gradient code does (the reference of the speed-ups);
- ``wgrad GEMM (budget)``: the batch weight-gradient GEMM ``D^T A`` that the LQS engine skips;
  statistics at about this cost fit the goal of 1.15x one plain forward+backward;
- ``torch direct`` / ``torch ghost``: the torch reference (chunked over examples) each way;
  ``torch auto`` is the one :func:`choose_method` picks (the contract's rule ``T^2 < d_in d_out``);
- on CUDA: ``triton direct`` / ``triton ghost`` (fused kernels).

Embedding ``(B, T, V, d)``: ``materialised G_n`` (``[B, V, d]`` by ``index_add``), the torch reference,
on CUDA the Triton kernel. Norm weight ``(B, T, d)``: the batch weight gradient (budget), the reference,
on CUDA the kernel.

    python benchmarks/bench_grad_stats.py              # CPU shapes, or GPU shapes on a GPU
    python benchmarks/bench_grad_stats.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels import choose_method, grad_stats_embedding, grad_stats_linear, grad_stats_norm

from _harness import Table, main_guard, parser, record, shapes

TINY_SHAPES = [(2, 16, 24, 40)]
CPU_SHAPES = [(8, 64, 256, 256), (8, 128, 512, 512), (4, 256, 256, 256), (4, 512, 256, 256), (4, 128, 768, 3072)]
GPU_SHAPES = [
    (16, 1024, 768, 768),
    (16, 1024, 768, 3072),
    (16, 1024, 3072, 768),
    (64, 128, 2048, 2048),
    (8, 2048, 4096, 4096),
]


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
    rows = {r.name: r for r in table.case(case, fns)}
    ctx = dict(shape=case, dtype=str(dtype))
    for m in ("direct", "ghost"):
        fast = rows.get(f"triton {m}") or rows[f"torch {m}"]
        record(
            table.args,
            f"kernels.linear.{m}.speedup_vs_reference",
            rows[f"torch {m}"].ms / fast.ms,
            "x torch reference",
            backend=fast.name.split()[0],
            **ctx,
        )
        record(
            table.args,
            f"kernels.linear.{m}.vs_wgrad_gemm",
            fast.ms / rows["wgrad GEMM (budget)"].ms,
            "x wgrad GEMM",
            backend=fast.name.split()[0],
            **ctx,
        )


def bench_embedding_and_norm(table: Table, dev: torch.device, dtype: torch.dtype, B: int, T: int, V: int, d: int):
    ids = torch.randint(0, V, (B, T), device=dev)
    D = torch.randn(B, T, d, device=dev, dtype=dtype)
    lam = torch.randn(V, d, device=dev)

    def materialised():
        rows = (torch.arange(B, device=dev)[:, None] * V + ids).flatten()
        G = torch.zeros(B * V, d, device=dev).index_add_(0, rows, D.float().flatten(0, 1)).view(B, V, d)
        return (G * lam).sum((1, 2)), G.square().sum((1, 2))

    backends = ("torch", "triton") if dev.type == "cuda" else ("torch",)
    fns = {"materialised G_n": materialised} | {
        f"{b}": (lambda b=b: grad_stats_embedding(ids, D, lam, backend=b)) for b in backends
    }
    table.case(f"embedding B={B} T={T} V={V} d={d}", fns)
    xhat = torch.randn(B, T, d, device=dev, dtype=dtype)
    fns = {"wgrad GEMM (budget)": lambda: (xhat * D).sum((0, 1))} | {
        f"{b}": (lambda b=b: grad_stats_norm(xhat, D, lam[0], backend=b)) for b in backends
    }
    table.case(f"norm weight B={B} T={T} d={d}", fns)


def run(args):
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    table = Table(f"per-example linear-layer statistics ({dtype})", ["materialised G_n", "wgrad GEMM (budget)"], args)
    if args.tiny:
        args.reps = 1
    for shape in shapes(args, TINY_SHAPES, CPU_SHAPES, GPU_SHAPES):
        bench_shape(table, dev, dtype, *shape)
    B, T = (2, 16) if args.tiny else (16, 1024) if dev.type == "cuda" else (8, 128)
    bench_embedding_and_norm(table, dev, dtype, B, T, 50 if args.tiny else 1000, 32 if args.tiny else 768)
    table.finish()


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default=None, help="input dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    main_guard(run, p)
