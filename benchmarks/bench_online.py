"""Online data selection: one optimizer step with ``--online-select`` against plain training steps.

The same model (same initial weights), the same AdamW and clipping, on one machine:

- ``plain B``: :class:`~lqs_megatron.training.step.TrainStep` on ``B`` samples (what a run without
  selection does per step);
- ``plain CB``: the same on all ``C B`` candidates (the cost of training on everything read);
- ``online dot`` / ``online greedy``: :class:`~lqs_megatron.training.online.OnlineStep` on the ``C B``
  candidates, keeping ``B`` (candidate pass, selection, assembled update), the target gradient cached
  (``--target-refresh`` large);
- ``target gradient``: one refresh of the target gradient (a target batch of ``B`` sequences), to add
  once every ``--target-refresh`` steps.

Wall time per step (median of ``--reps``) and CPU time (``time.process_time``, the same runs' median)
are printed; with ``--threads 1`` the CPU time is the single core's work.

    python benchmarks/bench_online.py --threads 1                   # CPU: the tiny and a larger model
    python benchmarks/bench_online.py --device cuda                 # GPU: 160M at T=1024, bf16
"""

from __future__ import annotations

import statistics
import time

import torch

from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.loading import build_model
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.online import OnlineSettings, OnlineStep
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.pretrainer import lm_micro_batches
from lqs_megatron.training.step import TrainStep

from _harness import Table, main_guard, parser, record

TINY_MODEL = dict(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2)
CPU_MODEL = dict(hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8, num_kv_heads=4)


def _plain(cfg, state, tokens, dims, amp):
    model = build_model(cfg, None, seed=0, device=dims.device)
    model.load_state_dict(state)
    opt = build_optimizer(model, lr=1e-4)
    step_fn = TrainStep(CausalLMLoss(model), dims, opt, WarmupCosine(1e-4, 1e-5, 0, 10**9), 1.0, amp)
    counter = iter(range(10**9))
    micro = lm_micro_batches(tokens, tokens.shape[0])
    return lambda: step_fn(micro, tokens.shape[0], next(counter)).loss


def _online(cfg, state, tokens, target, keep, method, dims, amp):
    model = build_model(cfg, None, seed=0, device=dims.device)
    model.load_state_dict(state)
    opt = build_optimizer(model, lr=1e-4)
    settings = OnlineSettings(method, keep, tokens.shape[0] // keep, 10**9)
    tgt = lm_micro_batches(target, target.shape[0])
    step_fn = OnlineStep(
        CausalLMLoss(model),
        dims,
        opt,
        WarmupCosine(1e-4, 1e-5, 0, 10**9),
        settings,
        lambda s: (tgt, len(target)),
        1.0,
        amp,
    )
    counter = iter(range(1, 10**9))  # step 0 computes the target gradient once; later steps reuse it
    micro = lm_micro_batches(tokens, tokens.shape[0])
    step_fn(micro, tokens.shape[0], 0)
    return step_fn, (lambda: step_fn(micro, tokens.shape[0], next(counter)).loss)


def cpu_ms(fn, reps: int, device: torch.device) -> float:
    """Median CPU time (all threads of the process) of ``fn()`` in ms."""
    times = []
    for _ in range(max(reps, 1)):
        t0 = time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.process_time() - t0) * 1e3)
    return statistics.median(times)


def bench_model(args, cfg: ModelConfig, label: str, batch: int, seq: int, c: int, dev, amp) -> None:
    dims = ParallelDims(device=dev)
    torch.manual_seed(0)
    cand = torch.randint(0, cfg.vocab_size, (c * batch, seq + 1), device=dev)
    target = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev)
    state = {k: v.detach().clone() for k, v in build_model(cfg, None, seed=0, device=dev).state_dict().items()}
    dot_step, dot = _online(cfg, state, cand, target, batch, "dot", dims, amp)
    _, greedy = _online(cfg, state, cand, target, batch, "greedy", dims, amp)
    fns = {
        "plain B": _plain(cfg, state, cand[:batch], dims, amp),
        "plain CB": _plain(cfg, state, cand, dims, amp),
        "online dot": dot,
        "online greedy": greedy,
        "target gradient": lambda: dot_step.target_gradient(0),
    }
    title = (
        f"online selection, {label}: {cfg.num_parameters() / 1e6:.2f}M params (d={cfg.hidden_size}, "
        f"{cfg.num_layers} layers, V={cfg.vocab_size}), B={batch}, C={c}, T={seq}, {'bf16' if amp else 'fp32'}"
    )
    table = Table(title, ["plain B", "plain CB"], args)
    rows = table.case(f"B={batch} C={c} T={seq}", fns, memory=not args.no_memory)
    table.finish()
    cpu = {name: cpu_ms(f, args.reps, dev) for name, f in fns.items()}
    parts = dot_step.record.seconds
    print("| implementation | wall ms/step | CPU ms/step | wall vs plain B | wall vs plain CB |")
    print("|---|---|---|---|---|")
    wall = {r.name: r.ms for r in rows}
    for name in fns:
        print(
            f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} | {wall[name] / wall['plain B']:.2f}x | "
            f"{wall[name] / wall['plain CB']:.2f}x |"
        )
    print("\nlast online dot step's split (s): " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()) + "\n")
    ctx = dict(
        model=label, params_m=round(cfg.num_parameters() / 1e6, 2), batch=batch, c=c, seq=seq, bf16=amp is not None
    )
    for name in ("online dot", "online greedy"):
        key = name.split()[1]
        record(args, f"online.{key}.vs_plain_cb", wall[name] / wall["plain CB"], "x plain step on C B", **ctx)
        record(args, f"online.{key}.vs_plain_b", wall[name] / wall["plain B"], "x plain step on B", **ctx)
        record(args, f"online.{key}.cpu_ms", cpu[name], "CPU ms/step", **ctx)


def run(args):
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    amp = torch.bfloat16 if on_gpu and not args.fp32 else None
    if args.tiny:
        args.reps = 1
        bench_model(args, ModelConfig(vocab_size=512, **TINY_MODEL), "tiny", 2, 16, 2, dev, amp)
        return
    if on_gpu:
        cfg = load_model_config(args.model_config or "160M", vocab_size=32000)
        bench_model(args, cfg, args.model_config or "160M", args.batch or 8, args.seq or 1024, args.c, dev, amp)
        return
    bench_model(
        args, ModelConfig(vocab_size=512, **TINY_MODEL), "tiny", args.batch or 8, args.seq or 64, args.c, dev, amp
    )
    bench_model(
        args,
        ModelConfig(vocab_size=8192, **CPU_MODEL),
        "larger CPU",
        args.batch or 4,
        args.seq or 128,
        args.c,
        dev,
        amp,
    )


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model-config", help="named config on CUDA (default 160M)")
    p.add_argument(
        "--seq", type=int, default=None, help="tokens per sample (default: 64 tiny / 128 larger CPU / 1024 GPU)"
    )
    p.add_argument(
        "--batch", type=int, default=None, help="kept samples per step B (default: 8 tiny / 4 larger / 8 GPU)"
    )
    p.add_argument("--c", type=int, default=4, help="candidates per kept sample (C)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.set_defaults(reps=5)
    main_guard(run, p)
