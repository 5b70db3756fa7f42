"""Ahead-of-time compilation of every Triton kernel for A100 (sm_80) and H100 (sm_90), without a GPU.

The launches are the ones the launchers pick (their pure ``*_launch`` functions) at the papers'
shapes: the 160M, 470M and 1B configs (``lqs_megatron/configs``) with the papers' 32,000-token
vocabulary, sequences of 1024 and 2048, proxy batches 1-64, tensor parallel 1/2/4/8, float32 and
bf16 inputs. Identical (kernel, signature, constexprs, options) launches are compiled once per target,
each twice: with no alignment hints and with every argument 16-divisible (what Triton's launcher
specialises for aligned tensors and dimensions), the two ends of what a run can see.

Run as ``python -m tests.kernels.aot`` (``TRITON_INTERPRET`` unset: compiling needs the real
``@triton.jit`` functions), it prints one JSON object: the kernels found, per target a skip reason
if the installed Triton cannot compile for it, and one row per compile (kernel, target, constexprs,
options, shared memory, the limit, an example shape, error). ``test_triton_compile.py`` runs it and
asserts; Triton's own on-disk cache makes a second run fast.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import torch

PAPER_MODELS = ("160M", "470M", "1B")
VOCAB = 32000
SEQS = (1024, 2048)
BATCHES = tuple(range(1, 65))
TP_SIZES = (1, 2, 4, 8)
DTYPES = (torch.float32, torch.bfloat16)
# max dynamic shared memory per block (CUDA programming guide, compute capabilities 8.0 / 9.0)
TARGETS = {
    "sm_80": {"cc": 80, "gpu": "A100", "smem": 163 * 1024, "sms": 108},
    "sm_90": {"cc": 90, "gpu": "H100", "smem": 227 * 1024, "sms": 132},
}
HINTS = ("none", "div16")


def discover_kernels() -> dict[str, object]:
    """Every ``@triton.jit`` function defined in a module of ``lqs_megatron.kernels``: ``module.name -> fn``."""
    import lqs_megatron.kernels as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(mod).values():
            fn = getattr(obj, "fn", None)
            if hasattr(obj, "arg_names") and callable(fn) and fn.__module__ == mod.__name__:
                found[qualname(obj)] = obj
    return found


def qualname(kernel) -> str:
    """``module.function`` of a ``@triton.jit`` function (the module's last component)."""
    return f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}"


def linear_shapes(cfg, tp: int) -> list[tuple[str, int, int]]:
    """``(layer, d_in, d_out)`` of one decoder block's linear layers on one tp rank (Megatron's split:
    q/k/v and gate/up column-parallel, o and down row-parallel)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    return [
        ("q", d, q // tp),
        ("k", d, kv // tp),
        ("v", d, kv // tp),
        ("o", q // tp, d),
        ("gate/up", d, f // tp),
        ("down", f // tp, d),
    ]


def paper_launches(targets: dict = TARGETS) -> Iterator[tuple[str, object]]:
    """``(example shape, Launch)`` for every op at every paper shape and target (duplicates included)."""
    from lqs_megatron.kernels.embedding_stats import embedding_launch
    from lqs_megatron.kernels.linear_stats import linear_direct_launch, linear_ghost_launches
    from lqs_megatron.kernels.lm_head_stats import chunk_examples
    from lqs_megatron.kernels.norm_stats import norm_launch
    from lqs_megatron.kernels.per_example_loss import chunk_rows, row_dlogits_launch, row_lse_launch
    from lqs_megatron.models.config import load_model_config

    f32 = torch.float32
    for size in PAPER_MODELS:
        cfg = load_model_config(size, vocab_size=VOCAB)
        d = cfg.hidden_size
        for tp in TP_SIZES:
            V = -(-VOCAB // tp)  # this rank's vocabulary rows
            for T in SEQS:
                for B in BATCHES:
                    for dtype in DTYPES:
                        where = f"{size} tp={tp} T={T} B={B} {str(dtype)[6:]}"
                        rows = chunk_rows(B * T, V, d)  # per_example_loss: chunks of rows
                        yield f"{where} loss", row_lse_launch(rows, V)
                        yield f"{where} loss", row_dlogits_launch(rows, V)
                        nb = chunk_examples(B, T, T, d, V)  # lm_head_stats: chunks of whole examples
                        yield f"{where} head", row_lse_launch(nb * T, V)
                        yield f"{where} head", row_dlogits_launch(nb * T, V)
                        for sms in {t["sms"] for t in targets.values()}:  # the direct grid fills the GPU
                            yield f"{where} head", linear_direct_launch(nb, d, V, dtype, True, sms, interpret=False)[0]
                        for layer, d_in, d_out in linear_shapes(cfg, tp):
                            for mask in (True, False):
                                w = f"{where} {layer}"
                                for sms in {t["sms"] for t in targets.values()}:
                                    yield w, linear_direct_launch(B, d_in, d_out, dtype, mask, sms, interpret=False)[0]
                                for launch in linear_ghost_launches(B, T, d_in, d_out, dtype, mask, interpret=False):
                                    yield f"{w} (ghost)", launch
                        yield f"{where} embedding", embedding_launch(B, d, dtype, f32)
                        for x_dtype in DTYPES:
                            for mask in (True, False):
                                yield f"{where} norm", norm_launch(B, d, x_dtype, dtype, f32, mask)


def launch_key(launch) -> tuple:
    """What a compile depends on: kernel, signature, constexprs, options (not the grid)."""
    return (
        qualname(launch.kernel),
        tuple(launch.signature().items()),
        tuple(sorted(launch.constexprs.items())),
        tuple(sorted(launch.options().items())),
    )


def unique_launches() -> dict[tuple, tuple[str, object]]:
    out: dict[tuple, tuple[str, object]] = {}
    for where, launch in paper_launches():
        out.setdefault(launch_key(launch), (where, launch))
    return out


def _attrs(signature: dict[str, str]):
    """Every non-constexpr argument 16-divisible, in the installed Triton's form (3.2: AttrsDescriptor)."""
    idx = [i for i, t in enumerate(signature.values()) if t != "constexpr"]
    try:
        from triton.backends.compiler import AttrsDescriptor
    except ImportError:  # triton >= 3.3
        return {(i,): [["tt.divisibility", 16]] for i in idx}
    return AttrsDescriptor.from_hints({i: 16 for i in idx})


def compile_launch(fn, signature: dict, constexprs: dict, options: dict, cc: int, hints: str):
    """``triton.compile`` for ``cuda:cc``; returns the compiled kernel (``.metadata.shared``, ``.asm``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = _attrs(signature) if hints == "div16" else None
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)


def _probe(cc: int) -> str | None:
    """None if the installed Triton compiles a trivial kernel for ``cuda:cc``, else the reason."""
    import triton

    from tests.kernels._aot_probe import copy_kernel

    sig = {"X": "*fp32", "Y": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    try:
        compile_launch(copy_kernel, sig, {"BLOCK": 16}, {"num_warps": 1}, cc, "none")
    except Exception as e:
        return f"triton {triton.__version__} cannot compile for sm_{cc}: {type(e).__name__}: {str(e)[:300]}"
    return None


_TASKS: list = []


def _run_task(i: int) -> dict:
    key, where, launch, target, hints = _TASKS[i]
    t = TARGETS[target]
    row = {
        "kernel": qualname(launch.kernel),
        "target": target,
        "hints": hints,
        "example": where,
        "constexprs": {k: str(v) for k, v in launch.constexprs.items()},
        "options": launch.options(),
        "signature": ",".join(launch.signature().values()),
        "limit": t["smem"],
        "shared": None,
        "error": None,
    }
    t0 = time.perf_counter()
    try:
        k = compile_launch(launch.kernel, launch.signature(), launch.constexprs, launch.options(), t["cc"], hints)
        row["shared"] = int(k.metadata.shared)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("tests.kernels.aot: unset TRITON_INTERPRET (compiling needs the real @triton.jit functions)")
    import triton

    t0 = time.perf_counter()
    kernels = discover_kernels()
    skipped = {name: r for name, t in TARGETS.items() if (r := _probe(t["cc"])) is not None}
    launches = unique_launches()
    _TASKS[:] = [
        (key, where, launch, target, hints)
        for key, (where, launch) in launches.items()
        for target in TARGETS
        if target not in skipped
        for hints in HINTS
    ]
    workers = max(1, min(int(os.environ.get("LQS_AOT_WORKERS", "2")), os.cpu_count() or 1))
    if workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            rows = list(pool.map(_run_task, range(len(_TASKS))))
    else:
        rows = [_run_task(i) for i in range(len(_TASKS))]
    out = {
        "triton": triton.__version__,
        "kernels": sorted(kernels),
        "skipped": skipped,
        "results": rows,
        "unique_launches": len(launches),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
