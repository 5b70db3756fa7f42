"""The LM head's per-example losses with its statistics in one pass, against a plain forward+backward.

Per shape ``(B, T, d, V)`` (vocabulary ``V``, hidden size ``d``), time and peak memory of:

- ``materialised fwd+bwd`` (the reference of the ratios): ``logits = h W^T`` in float32,
  ``F.cross_entropy(reduction="none")``, masked mean per example, ``backward`` wrt ``h`` and ``W``:
  what one training step of the head costs, the budget the statistics pass is measured against;
- ``fused loss fwd+bwd``: :func:`~lqs_megatron.kernels.per_example_loss` with the same backward;
- ``lm_head_stats``: :func:`~lqs_megatron.kernels.lm_head_loss_and_stats` (losses, ``<G_n, Lambda>``,
  ``|G_n|^2`` of the head weight, then ``backward`` wrt ``h`` of ``losses.sum()``), on the torch
  reference (``torch``) and on CUDA the Triton path (``triton``).

    python benchmarks/bench_lm_head_stats.py [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lqs_megatron.kernels import lm_head_loss_and_stats, per_example_loss

from _harness import Table, main_guard, parser, record, shapes

TINY_SHAPES = [(2, 16, 32, 100)]
CPU_SHAPES = [(4, 128, 256, 8192), (4, 128, 512, 32000)]
GPU_SHAPES = [(16, 1024, 768, 32000), (8, 2048, 2048, 32000)]


def materialised(h, w, labels, mask):
    logits = (h @ w.T).float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return (ce.view_as(mask) * mask).sum(1) / mask.sum(1)


def bench_shape(table: Table, dev: torch.device, dtype: torch.dtype, B: int, T: int, d: int, V: int):
    h = torch.randn(B, T, d, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.randn(V, d, device=dev, dtype=dtype) / d**0.5).requires_grad_()
    lam = torch.randn(V, d, device=dev)
    mask = torch.ones(B, T, device=dev)
    labels = torch.randint(0, V, (B, T), device=dev)

    def step(f):
        h.grad = w.grad = None
        f(h, w, labels, mask).sum().backward()

    def stats(backend):
        h.grad = None
        losses, dot, sq, _ = lm_head_loss_and_stats(h, w.detach(), labels, mask, lam, V, backend=backend)
        losses.sum().backward()
        return dot, sq

    fns = {"materialised fwd+bwd": lambda: step(materialised), "fused loss fwd+bwd": lambda: step(per_example_loss)}
    for backend in ("torch", "triton") if dev.type == "cuda" else ("torch",):
        fns[f"lm_head_stats {backend}"] = lambda b=backend: stats(b)
    case = f"B={B} T={T} d={d} V={V}"
    rows = {r.name: r for r in table.case(case, fns)}
    ours = rows.get("lm_head_stats triton") or rows["lm_head_stats torch"]
    base = rows["materialised fwd+bwd"]
    ctx = dict(shape=case, dtype=str(dtype), backend=ours.name.split()[-1])
    record(table.args, "kernels.lm_head.time_vs_fwd_bwd", ours.ms / base.ms, "x materialised fwd+bwd", **ctx)
    if base.peak_mib:
        record(
            table.args,
            "kernels.lm_head.memory_vs_fwd_bwd",
            ours.peak_mib / base.peak_mib,
            "x materialised fwd+bwd",
            **ctx,
        )


def run(args):
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    if args.tiny:
        args.reps = 1
    table = Table(f"LM head: per-example losses and statistics ({dtype})", ["materialised fwd+bwd"], args)
    for shape in shapes(args, TINY_SHAPES, CPU_SHAPES, GPU_SHAPES):
        bench_shape(table, dev, dtype, *shape)
    table.finish()


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default=None, help="dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    main_guard(run, p)
