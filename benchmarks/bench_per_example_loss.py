"""Fused per-example loss against materialised logits + ``F.cross_entropy(reduction="none")``.

Per shape ``(B, T, d, V)``, forward+backward (gradients wrt hidden states and head weight from
``loss.sum()``) and forward alone (no grad), time and peak memory:

- ``materialised``: ``logits = h W^T`` (float32), ``F.cross_entropy(reduction="none")``, masked mean
  per example (the reference of the ratios);
- ``fused``: :func:`per_example_loss` with ``backend="auto"`` (Triton on CUDA; the chunked torch
  reference on the CPU); on CUDA also ``torch reference``.

    python benchmarks/bench_per_example_loss.py [--device cuda] [--pad-frac 0.25]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lqs_megatron.kernels.per_example_loss import per_example_loss, per_example_loss_reference

from _harness import Table, main_guard, parser, record, shapes

TINY_SHAPES = [(2, 16, 32, 100)]
CPU_SHAPES = [(4, 128, 256, 8192), (8, 128, 512, 32000)]
GPU_SHAPES = [(16, 1024, 768, 32000), (8, 2048, 2048, 32000), (4, 4096, 4096, 128256)]


def materialised(h, w, labels, mask):
    logits = (h @ w.T).float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    return (ce.view_as(mask) * mask).sum(1) / mask.sum(1)


def bench_shape(table: Table, dev: torch.device, dtype: torch.dtype, pad_frac: float, B: int, T: int, d: int, V: int):
    h = torch.randn(B, T, d, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.randn(V, d, device=dev, dtype=dtype) / d**0.5).requires_grad_()
    mask = (torch.arange(T, device=dev) < T - int(pad_frac * T)).float().expand(B, T).contiguous()
    labels = torch.randint(0, V, (B, T), device=dev).masked_fill(mask == 0, -100)
    impls = {"materialised": materialised, "fused": per_example_loss}
    if dev.type == "cuda":
        impls["torch reference"] = per_example_loss_reference

    def step(f):
        h.grad = w.grad = None
        f(h, w, labels, mask).sum().backward()

    def forward(f):
        with torch.no_grad():
            return f(h, w, labels, mask)

    case = f"B={B} T={T} d={d} V={V}"
    for phase, fn in (("fwd_bwd", step), ("forward", forward)):
        fns = {k: (lambda f=f, fn=fn: fn(f)) for k, f in impls.items()}
        rows = table.case(f"{case} {phase.replace('_', '+')}", fns)
        speed, mem = next(r for r in rows if r.name == "fused").ratios["materialised"]
        ctx = dict(shape=case, dtype=str(dtype), pad_frac=pad_frac, backend="triton" if dev.type == "cuda" else "torch")
        record(table.args, f"kernels.loss.{phase}.speedup", speed, "x materialised", **ctx)
        record(table.args, f"kernels.loss.{phase}.memory_ratio", mem, "x materialised", **ctx)


def run(args):
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    if args.tiny:
        args.reps = 1
    table = Table(f"per-example loss ({dtype}, padding {args.pad_frac:.0%})", ["materialised"], args)
    for shape in shapes(args, TINY_SHAPES, CPU_SHAPES, GPU_SHAPES):
        bench_shape(table, dev, dtype, args.pad_frac, *shape)
    table.finish()


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default=None, help="dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--pad-frac", type=float, default=0.0, help="fraction of each sequence that is padding")
    main_guard(run, p)
