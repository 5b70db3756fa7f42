"""``--distributed-optimizer`` against plain AdamW under DDP: optimizer state per rank and step time.

``--world`` gloo processes on the CPU (data parallelism only, tp 1) each train the same small
decoder on their share of a global batch with :class:`~lqs_megatron.training.step.TrainStep`, what
``lqs pretrain`` runs per step, once with AdamW (every rank holds all the state) and once with
torch's ``ZeroRedundancyOptimizer`` (each rank holds its part, then broadcasts its updated
parameters), each in fresh processes. Per rank: the bytes of AdamW state it holds
(:func:`optimizer_state_bytes`, after the first step), its peak memory (the resident set size on the
CPU, ``torch.cuda.max_memory_allocated`` on a GPU) and the median step time over ``--reps`` steps after
one warm-up step. ``--device cuda``: every rank on the machine's GPU (``cuda:LOCAL_RANK`` modulo the
GPUs), still over gloo (NCCL refuses two ranks on one device).

    python benchmarks/bench_distopt.py --threads 1 [--world 4]  # d=256, 4 layers, V=8192, 4 samples x 128 tokens
    python benchmarks/bench_distopt.py --tiny
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.loading import build_model
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.optim import WarmupCosine, build_optimizer, optimizer_state_bytes
from lqs_megatron.training.pretrainer import lm_micro_batches
from lqs_megatron.training.step import TrainStep

from _harness import machine, main_guard, parser, record, versions

CPU_MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8, num_kv_heads=4)
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2)


def peak_mb(device: str) -> float:
    """This process's peak memory so far: CUDA memory allocated, or the resident set size on the CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e6
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def measure(dims, cfg: ModelConfig, distributed: bool, batch: int, seq: int, reps: int) -> tuple[int, float, float]:
    """``(optimizer state bytes, median step seconds, peak memory MB)`` of this rank."""
    model = build_model(cfg, dims, seed=0)
    opt = build_optimizer(model, 1e-4, dims=dims, distributed=distributed)
    step_fn = TrainStep(CausalLMLoss(model), dims, opt, WarmupCosine(1e-4, 1e-5, 0, 10**6), 1.0)
    gen = torch.Generator().manual_seed(dims.rank)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen).to(dims.device)
    micro = lm_micro_batches(tokens, batch)
    step_fn(micro, batch, 0)  # warm-up; creates the moments
    state = optimizer_state_bytes(opt)
    times = []
    for s in range(reps):
        dims.barrier()
        if dims.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step_fn(micro, batch, s + 1)
        if dims.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return state, statistics.median(times), peak_mb(dims.device.type)


def _worker(rank: int, world: int, init: str, cfg_dict: dict, run: tuple, out: dict) -> None:
    """One rank of one optimizer's measurement (a fresh process per optimizer: its own peak memory)."""
    import torch.distributed as dist

    name, distributed, device, batch, seq, reps = run
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # gloo also on CUDA: the ranks of a one-GPU machine share its device, which NCCL refuses
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=1, device=device)
    res = dims.all_gather_object(measure(dims, ModelConfig(**cfg_dict), distributed, batch, seq, reps))
    if rank == 0:
        out[name] = res
    dist.destroy_process_group()


def run(args) -> None:
    import torch.multiprocessing as mp

    cfg_dict = TINY_MODEL if args.tiny else CPU_MODEL
    batch, seq, reps = (2, 16, 2) if args.tiny else (args.batch, args.seq, args.reps)
    cfg = ModelConfig(**cfg_dict)
    n = cfg.num_parameters()
    results = {}
    for name, distributed in (("DDP + AdamW", False), ("--distributed-optimizer", True)):
        with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
            out = manager.dict()
            worker_args = (
                args.world,
                os.path.join(tmp, "init"),
                cfg_dict,
                (name, distributed, args.device, batch, seq, reps),
                out,
            )
            mp.spawn(_worker, args=worker_args, nprocs=args.world, join=True)
            results.update(out)
    title = f"Distributed optimizer: {n / 1e6:.2f}M parameters, dp {args.world} (gloo), {batch} x {seq} tokens per rank"
    print(f"\n## {title}\n")
    load = " | load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"{machine(args.device)} | {versions()} | one torch thread per rank{load}\n")
    peak = "peak CUDA memory" if args.device == "cuda" else "peak RSS"
    print(
        f"| optimizer | AdamW state per rank MB (max) | vs DDP | {peak} per rank MB (max) "
        "| step ms (median, max over ranks) |"
    )
    print("|---|---|---|---|---|")
    base = max(r[0] for r in results["DDP + AdamW"])
    for name, per_rank in results.items():
        mb, ms, pk = max(r[0] for r in per_rank), max(r[1] for r in per_rank) * 1e3, max(r[2] for r in per_rank)
        print(f"| {name} | {mb / 1e6:.2f} | {mb / base:.2f} | {pk:.1f} | {ms:.1f} |")
        key = "zero" if "distributed" in name else "ddp"
        record(args, f"distopt.{key}.state_mb_per_rank", mb / 1e6, "MB", world=args.world, params=n)
        record(args, f"distopt.{key}.peak_mb_per_rank", pk, "MB", world=args.world, params=n)
        record(args, f"distopt.{key}.step_ms", ms, "ms", world=args.world, params=n)
        if key == "zero":
            record(args, "distopt.zero.state_ratio", mb / base, "x", world=args.world, params=n)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="gloo processes (data-parallel ranks)")
    p.add_argument("--batch", type=int, default=4, help="samples per rank per step")
    p.add_argument("--seq", type=int, default=128, help="tokens per sample")
    p.set_defaults(reps=10)
    main_guard(run, p)
