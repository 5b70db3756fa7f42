"""Threads on a loaded machine: torch's default intra-op threads against ``lqs``'s default (utils/threads.py).

The same small training loop (our decoder, forward + backward + AdamW, fp32 on the CPU) runs in a
fresh process per case, with no ``OMP_NUM_THREADS``:

- ``torch default``: one thread per core (what every ``lqs`` command did before);
- ``lqs default``: :func:`lqs_megatron.utils.threads.configure_threads` (the cores free at start-up);

each on the machine as it is and with ``--busy`` CPU-bound processes (``while True: pass``) started
next to it. The load average at the start of each case is printed: on a shared machine the "as it
is" case is not quiet, so name it when quoting the figures.

    python benchmarks/bench_threads.py               # 2 x 2 cases, about 2 minutes on 2 cores
    python benchmarks/bench_threads.py --tiny        # seconds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CPU_MODEL = dict(hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32)
TINY_MODEL = dict(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)


def child(mode: str, steps: int, tiny: bool) -> None:
    """One case: set the threads as ``mode`` says, then time ``steps`` training steps; print threads and seconds."""
    os.environ.pop("OMP_NUM_THREADS", None)
    if mode == "lqs":
        from lqs_megatron.utils.threads import configure_threads

        configure_threads()
    import torch

    from lqs_megatron.models.config import ModelConfig
    from lqs_megatron.models.loading import build_model

    cfg = ModelConfig(vocab_size=2048, max_position_embeddings=256, **(TINY_MODEL if tiny else CPU_MODEL))
    model = build_model(cfg, seed=0, device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, t = (2, 32) if tiny else (8, 128)
    ids = torch.randint(0, cfg.vocab_size, (b, t + 1), generator=torch.Generator().manual_seed(0))

    def step():
        logits = model.logits(model(ids[:, :-1]))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(torch.get_num_threads(), time.perf_counter() - t0, flush=True)


def run_case(mode: str, busy: int, steps: int, tiny: bool) -> tuple[int, float, float]:
    """``(threads, seconds, load average at the start)`` of one case with ``busy`` spinning processes beside it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # let the spinners take their cores
        load = os.getloadavg()[0]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LQS_THREADS_AUTO")}
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--steps", str(steps)]
        out = subprocess.run(cmd + (["--tiny"] if tiny else []), capture_output=True, text=True, env=env, check=True)
        threads, seconds = out.stdout.split()
        return int(threads), float(seconds), load
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="timed training steps per case (default 30; --tiny 3)")
    p.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the loaded cases")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: seconds")
    p.add_argument("--child", choices=["torch", "lqs"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    steps = args.steps or (3 if args.tiny else 30)
    if args.child:
        return child(args.child, steps, args.tiny)
    print(f"## threads: {steps} training steps, {os.cpu_count()} cores, affinity {len(os.sched_getaffinity(0))}\n")
    print("| beside it | threads from | threads | seconds | s/step | load avg at start | vs torch default |")
    print("|---|---|---|---|---|---|---|")
    for busy in (0, args.busy):
        base = None
        for mode in ("torch", "lqs"):
            threads, seconds, load = run_case(mode, busy, steps, args.tiny)
            base = base or seconds
            label = "torch default" if mode == "torch" else "lqs default"
            print(
                f"| {busy} busy processes | {label} | {threads} | {seconds:.2f} | {seconds / steps:.3f} | "
                f"{load:.1f} | {base / seconds:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
