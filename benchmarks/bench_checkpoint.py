"""Checkpoint save and load: this project's format (``training/checkpoint.py``) against
``torch.distributed.checkpoint`` (DCP), and the cost of resharding a tp2 checkpoint on load.

One small decoder with AdamW state after one step (so the moments exist), on the CPU:

- ``ours``: :func:`save_checkpoint` (safetensors weights, ``torch.save`` optimizer, trainer and RNG
  files, CRC-32 of every file, atomic publish) and :func:`load_training_state` (every file validated);
- ``dcp``: ``torch.distributed.checkpoint.save`` / ``load`` of the same model and optimizer state
  dicts (one process, no process group: DCP's no-dist mode);
- ``ours, tp2 -> tp1``: a checkpoint written by 2 gloo ranks at tp2 loaded by one process (the shards
  of the weights and of both AdamW moments merged, the vocabulary padding fitted).

Size is the bytes on disk of one step directory. Times are the median of ``--reps`` runs (a page
cache warm from the previous run: these are CPU costs, not disk bandwidth).

    python benchmarks/bench_checkpoint.py           # d=256, 4 layers, V=8192 (7.15M parameters)
    python benchmarks/bench_checkpoint.py --model medium   # d=512, 6 layers, V=16384
    python benchmarks/bench_checkpoint.py --tiny
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.loading import build_model
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.checkpoint import load_training_state, save_checkpoint
from lqs_megatron.training.optim import build_optimizer

from _harness import machine, main_guard, parser, record, versions

CPU_MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8, num_kv_heads=4)
# --model medium: about 5x the parameters (34.48M), for the figures' dependence on size
MEDIUM_MODEL = dict(
    vocab_size=16384, hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8, num_kv_heads=4
)
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2)


def stepped(cfg: ModelConfig, dims: ParallelDims):
    """A model and its AdamW after one update (random gradients), so the moments exist."""
    model = build_model(cfg, dims, seed=1)
    opt = build_optimizer(model, 1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def meta(model, dims: ParallelDims, step: int) -> dict:
    out = {"model": model.config.to_dict(), "padded_vocab_size": model.padded_vocab_size, "tp": dims.tp}
    return {**out, "make_vocab_size_divisible_by": 1, "step": step, "dtype": "float32"}


def trainer_state(dims: ParallelDims) -> dict:
    return {"step": 1, "world_size": dims.world_size, "stream": {}, "config": {}}


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _write_tp2(rank: int, world: int, cfg_dict: dict, root: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=2, device="cpu")
    model, opt = stepped(ModelConfig(**cfg_dict), dims)
    save_checkpoint(Path(root) / "tp2", 1, model, opt, dims, meta(model, dims, 1), trainer_state(dims))
    dist.destroy_process_group()


def run(args) -> None:
    import torch.distributed.checkpoint as dcp
    import torch.multiprocessing as mp

    torch.set_num_threads(args.threads or 1)
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # DCP's one-process notice
    cfg_dict = TINY_MODEL if args.tiny else MEDIUM_MODEL if args.model == "medium" else CPU_MODEL
    cfg, one = ModelConfig(**cfg_dict), ParallelDims()
    reps = 2 if args.tiny else args.reps
    model, opt = stepped(cfg, one)
    fresh_model, fresh_opt = stepped(cfg, one)
    n = sum(p.numel() for p in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        step = [0]

        def save_ours():
            step[0] += 1
            m = meta(model, one, step[0])
            return save_checkpoint(tmp / "ours", step[0], model, opt, one, m, trainer_state(one), keep_last=1)

        t_save = median_s(save_ours, reps)
        ours = save_ours()
        t_load = median_s(lambda: load_training_state(ours, fresh_model, fresh_opt, one), reps)
        rows.append(("ours", t_save, t_load, dir_bytes(ours)))

        def state():
            return {"model": model.state_dict(), "optim": opt.state_dict()}

        def save_dcp():
            shutil.rmtree(tmp / "dcp", ignore_errors=True)
            dcp.save(state(), checkpoint_id=str(tmp / "dcp"))

        t_save = median_s(save_dcp, reps)
        target = {"model": fresh_model.state_dict(), "optim": fresh_opt.state_dict()}
        t_load = median_s(lambda: dcp.load(target, checkpoint_id=str(tmp / "dcp")), reps)
        rows.append(("dcp", t_save, t_load, dir_bytes(tmp / "dcp")))

        mp.spawn(_write_tp2, args=(2, cfg_dict, str(tmp)), nprocs=2, join=True)
        tp2 = tmp / "tp2" / "step_00000001"
        t_load = median_s(lambda: load_training_state(tp2, fresh_model, fresh_opt, one), reps)
        rows.append(("ours, tp2 -> tp1", float("nan"), t_load, dir_bytes(tp2)))

    print(f"\n## Checkpoint save / load ({n / 1e6:.2f}M parameters + AdamW state, one process)\n")
    print(f"{machine('cpu')} | {versions()} | torch threads {torch.get_num_threads()}\n")
    print("| format | save s | load s | size MB |")
    print("|---|---|---|---|")
    for name, s, ld, b in rows:
        print(f"| {name} | {'-' if s != s else f'{s:.3f}'} | {ld:.3f} | {b / 1e6:.2f} |")
        record(args, f"checkpoint load s ({name})", ld, "s", params=n)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--model", choices=("small", "medium"), default="small", help="small: 7.15M, medium: 34.48M parameters"
    )
    p.set_defaults(reps=5)
    main_guard(run, p)
