"""Per-example statistics ``<g_n, lambda>`` and ``|g_n|`` of a proxy batch, every way, each measured
against one plain forward+backward of the same model and batch, in one run.

Rows per model size (float32 by default, ``--dtype bf16`` for bf16 autocast on float32 weights as
``lqs annotate --dtype bf16`` runs; batch 8, length 128, one CPU thread as in issue 4):

- ``fwd+bwd``: the baseline: per-example losses (the fused kernel), ``mean().backward()`` with the
  parameters requiring grad (their ``.grad`` buffers count in its memory);
- ``ours``: :class:`lqs_megatron.lqs.stats.ExampleStats`: one forward with hooks, one backward of
  ``sum_n l_n`` without weight gradients, per-layer statistics from the kernels; both dots and norms;
- ``vmap(grad)``: the DELT way: ``torch.func.vmap(grad(loss))`` over ``functional_call``, every
  per-example gradient materialised, then the two reductions;
- ``jvp``: the PDS way: ``torch.func.jvp`` of the per-example losses in the direction ``lambda``:
  dot products only, no norms.

Time: the harness (median of ``--reps`` round-robin runs on the CPU, ``do_bench`` on a GPU).
Memory: the peak beyond what exists before the call (the model, its inputs). On a GPU the
allocator's peak (the harness). On the CPU a fresh subprocess per (method, batch): after a warm-up
at batch 1 the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``), the
method runs once, and ``VmHWM - VmRSS(before)`` is its peak: everything the process touched,
op-internal buffers and functorch's wrappers included (the harness's tensor-storage tracker cannot
follow ``vmap``/``jvp`` tensors).

Then the throughput that matters for annotating a large proxy set: proxy examples per second at the
largest batch that fits ``--budget-mib`` (ours vs vmap; on a GPU ``--budget-mib 0`` means 90% of
its memory, ``-1`` skips the search). The largest batch is found by the harness's
:func:`largest_batch` (affine fit from two small batches, checked, shrunk on out-of-memory), then timed.

    python -P benchmarks/bench_annotate.py                       # CPU: 8M and 64M, B=8, T=128, 1 thread
    python -P benchmarks/bench_annotate.py --device cuda --sizes 160M --length 1024 --dtype bf16 --budget-mib 0
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import lqs_megatron.kernels.linear_stats as grad_stats
from lqs_megatron.lqs.examples import Batch
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.models.config import ModelConfig, load_model_config
from lqs_megatron.models.loading import build_model
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.loss import per_example_lm_loss

from _harness import Row, largest_batch, machine, main_guard, parser, peak_mib_or_inf, record, time_ms, versions

_RULE_ENV = "LQS_BENCH_REFERENCE_RULE"


def set_reference_rule(rule: str | None) -> None:
    """``--reference-rule``: how the torch reference picks ghost or direct per layer in this process
    (and the memory subprocesses, through the environment). ``None``/``""``: the library's
    ``choose_method``; a number R: its rule with ``GHOST_WORK_RATIO = R``; ``contract``: ghost
    when ``T^2 < d_in d_out``; ``direct`` / ``ghost``: every layer that way."""
    if not rule:
        return
    os.environ[_RULE_ENV] = rule
    tuned = grad_stats.choose_method
    if rule not in ("contract", "direct", "ghost"):
        grad_stats.GHOST_WORK_RATIO = float(rule)
        return

    def choose(seq_len, d_in, d_out, fused=False):
        if fused:
            return tuned(seq_len, d_in, d_out, fused)
        if rule == "contract":
            return "ghost" if seq_len * seq_len < d_in * d_out else "direct"
        return rule

    grad_stats.choose_method = choose


SIZES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4),
    "8M": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4),
    "64M": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8),
}


def model_config(size: str) -> ModelConfig:
    if size in SIZES:
        return ModelConfig(**SIZES[size])
    return load_model_config(size, vocab_size=32000)  # the named configs (160M, ...) with the papers' vocabulary


def random_batch(B: int, T: int, vocab: int, device) -> Batch:
    ids = torch.randint(0, vocab, (B, T), device=device)
    labels = torch.randint(0, vocab, (B, T), device=device)
    return Batch(ids, labels, torch.ones(B, T, device=device), torch.arange(B).numpy())


class Methods:
    """The four ways on one model; each callable takes a batch (under bf16 autocast when ``amp``)."""

    def __init__(self, model, lam, amp: bool = False):
        self.model, self.lam = model, lam
        self.amp = amp
        self.vocab = model.config.vocab_size
        self.stats = ExampleStats(model, ParallelDims())
        self.params = {n: p.detach() for n, p in model.named_parameters()}

    def _autocast(self):
        return torch.autocast(self.model.output.weight.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def fwd_bwd(self, b: Batch):
        for p in self.model.parameters():
            p.grad = None
        with self._autocast():
            loss = per_example_lm_loss(self.model, b.input_ids, b.labels, b.loss_mask).mean()
        loss.backward()

    def ours(self, b: Batch):
        with self._autocast():
            return self.stats(b, self.lam)

    def _loss(self, p, ids, labels, mask):
        """Per-example losses with plain ops (materialised logits, as the DELT/PDS code does): vmap- and
        forward-mode-friendly, unlike the chunked kernel's reference."""
        hidden = functional_call(self.model, p, (ids,))
        logits = hidden @ p["output.weight"].T
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(mask)
        return (ce * mask).sum(-1) / mask.sum(-1)

    def vmap(self, b: Batch):
        def one(p, ids, labels, mask):
            return self._loss(p, ids[None], labels[None], mask[None])[0]

        with sdpa_kernel(SDPBackend.MATH), self._autocast():
            g = vmap(grad(one), in_dims=(None, 0, 0, 0))(self.params, b.input_ids, b.labels, b.loss_mask)
        dot = sum((g[n] * self.lam[n]).flatten(1).sum(1) for n in g)
        sq = sum(g[n].square().flatten(1).sum(1) for n in g)
        return dot, sq

    def jvp(self, b: Batch):
        with sdpa_kernel(SDPBackend.MATH), self._autocast():
            _, dots = jvp(lambda p: self._loss(p, b.input_ids, b.labels, b.loss_mask), (self.params,), (self.lam,))
        return dots


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_memory(size: str, method: str, B: int, T: int, amp: bool = False) -> float:
    """In a fresh process: peak resident memory (MiB) of one call of ``method`` at batch ``B`` (see above)."""
    torch.set_num_threads(1)
    cfg = model_config(size)
    m = Methods(build_model(cfg, seed=0), None, amp)
    m.lam = {n: torch.randn(p.shape) for n, p in m.model.named_parameters()}
    fn = getattr(m, METHOD_FNS[method])
    fn(random_batch(1, T, cfg.vocab_size, "cpu"))  # warm-up: lazy initialisation, not measured
    batch = random_batch(B, T, cfg.vocab_size, "cpu")
    for p in m.model.parameters():
        p.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_mib("VmRSS")
    fn(batch)
    return _rss_mib("VmHWM") - before


METHOD_FNS = {"fwd+bwd": "fwd_bwd", "ours": "ours", "vmap(grad) (DELT)": "vmap", "jvp (PDS, dots only)": "jvp"}


def memory_mib(args, m: Methods | None, size: str, method: str, B: int) -> float:
    """Peak memory of one call: the allocator's on a GPU, a subprocess's resident high-water mark on the CPU
    (``--tiny``: in-process, as on a GPU, with the harness's tensor tracker, which undercounts vmap)."""
    if args.device.startswith("cuda") or args.tiny:
        try:
            b = random_batch(B, args.length, m.model.config.vocab_size, args.device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return float("inf")
        return peak_mib_or_inf(lambda: getattr(m, METHOD_FNS[method])(b), args.device)
    cmd = [
        sys.executable,
        "-P",
        os.path.abspath(__file__),
        "--child",
        size,
        method,
        str(B),
        str(args.length),
        args.dtype,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def bench_size(args, size: str, dev: torch.device) -> tuple[list[Row], list[str]]:
    """Rows of one model size (time and memory against fwd+bwd), plus summary lines."""
    cfg = model_config(size)
    model = build_model(cfg, seed=0).to(dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    lam = {n: torch.randn(p.shape, generator=gen, device=dev) for n, p in model.named_parameters()}
    m = Methods(model, lam, args.dtype == "bf16")
    batch = random_batch(args.batch, args.length, cfg.vocab_size, dev)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    names = ["fwd+bwd", "ours"] + [k for k in METHOD_FNS if k.split("(")[0].strip() in args.methods.split(",")]
    calls = {k: getattr(m, METHOD_FNS[k]) for k in names}
    fns = {k: (lambda f=f: f(batch)) for k, f in calls.items()}
    ms = time_ms(fns, args.device, args.reps, args.stat)
    case = f"{size} ({n_params:.1f}M params)"
    rows = [Row(case, k, ms[k], memory_mib(args, m, size, k, args.batch)) for k in names]
    base = rows[0]
    for r in rows[1:]:
        r.ratios["fwd+bwd"] = (r.ms / base.ms, r.peak_mib / base.peak_mib)
    ctx = dict(size=size, batch=args.batch, length=args.length, dtype=args.dtype)
    for r in rows[1:]:
        key = "ours" if r.name == "ours" else r.name.split(" ")[0]
        record(args, f"annotate.{key}.time_ratio", r.ratios["fwd+bwd"][0], "x fwd+bwd", **ctx)
        record(args, f"annotate.{key}.memory_ratio", r.ratios["fwd+bwd"][1], "x fwd+bwd", **ctx)
    out = []
    if "vmap" in args.methods:  # agreement of the two ways that give both statistics

        def rel(a, b):
            return float(((a.double() - b.double()).abs() / b.double().abs()).max())

        (d1, s1), (d2, s2) = m.ours(batch), m.vmap(batch)
        out.append(
            f"{size}: ours vs vmap(grad): max relative difference <g,lambda> {rel(d1, d2):.2e}, |g|^2 {rel(s1, s2):.2e}"
        )
    budget = args.budget_mib
    if budget == 0 and dev.type == "cuda":  # the GPU's memory, less what the model and lambda hold
        total = torch.cuda.get_device_properties(dev).total_memory
        budget = (0.9 * total - torch.cuda.memory_allocated()) / 2**20
    if budget > 0:
        tput = {}
        ways = ["ours"] + (["vmap(grad) (DELT)"] if "vmap" in args.methods else [])
        for name in ways:
            B, mem = largest_batch(
                lambda b, name=name: memory_mib(args, m, size, name, b),
                budget,
                start=1 if args.tiny else 2,
                cap=args.max_batch,
            )
            b = random_batch(B, args.length, cfg.vocab_size, dev)
            f = getattr(m, METHOD_FNS[name])
            t = time_ms({name: lambda f=f, b=b: f(b)}, args.device, max(1, args.reps // 3), args.stat)[name]
            tput[name] = B / t * 1e3
            key = "ours" if name == "ours" else "vmap"
            record(args, f"annotate.{key}.largest_batch", B, "examples", budget_mib=budget, **ctx)
            record(args, f"annotate.{key}.examples_per_s", tput[name], "examples/s", batch_used=B, **ctx)
            out.append(
                f"{size}: {name}: largest batch in {budget:.0f} MiB = {B} (peak {mem:.0f} MiB), "
                f"{tput[name]:.2f} proxy examples/s"
            )
        if len(tput) == 2:
            r = tput["ours"] / tput["vmap(grad) (DELT)"]
            record(args, "annotate.throughput_ratio", r, "x vmap(grad)", **ctx)
            out.append(f"{size}: proxy examples/s at the budget, ours / vmap(grad) = {r:.2f}x")
    return rows, out


def run(args):
    set_reference_rule(args.reference_rule)
    dev = torch.device(args.device)
    if not args.threads and dev.type == "cpu":
        torch.set_num_threads(1)
    if args.tiny:
        args.sizes, args.batch, args.length, args.methods, args.reps = "tiny", 2, 16, "vmap", 1
        args.budget_mib = args.budget_mib if args.device.startswith("cuda") else 64
    print(f"## LQS per-example statistics vs one forward+backward ({args.dtype}, B={args.batch}, T={args.length})\n")
    print(f"machine: {machine(args.device)}; {versions()}\n")
    if args.reference_rule:
        print(f"torch reference ghost/direct rule: {args.reference_rule}\n")
    print(f"| model | method | {args.stat} ms | peak MiB | time / fwd+bwd | peak memory / fwd+bwd |")
    print("|---|---|---|---|---|---|")
    summary = []
    for size in args.sizes.split(","):
        rows, lines = bench_size(args, size, dev)
        for r in rows:
            t, mem = r.ratios.get("fwd+bwd", (1.0, 1.0))
            print(f"| {r.case} | {r.name} | {r.ms:.1f} | {r.peak_mib:.1f} | {t:.3f}x | {mem:.3f}x |", flush=True)
        summary += lines
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        size, method, B, T, dtype = sys.argv[2:7]
        set_reference_rule(os.environ.get(_RULE_ENV))
        print(child_memory(size, method, int(B), int(T), dtype == "bf16"))
        sys.exit(0)
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8M,64M", help="model sizes: 8M, 64M, or a named config (160M, ...)")
    p.add_argument("--batch", type=int, default=8, help="proxy batch size of the timed case")
    p.add_argument("--length", type=int, default=128, help="tokens per example")
    p.add_argument("--methods", default="vmap,jvp", help="comparison methods besides fwd+bwd and ours")
    p.add_argument(
        "--budget-mib",
        type=float,
        default=2048,
        help="memory budget of the throughput search (0: 90%% of the GPU's memory on CUDA; -1: skip)",
    )
    p.add_argument("--max-batch", type=int, default=4096, help="largest batch the throughput search tries")
    p.add_argument(
        "--dtype",
        choices=["float32", "bf16"],
        default="float32",
        help="float32, or bf16 autocast on float32 weights (lqs annotate --dtype bf16)",
    )
    p.add_argument(
        "--reference-rule",
        default=None,
        help="ghost/direct choice of the torch reference (CPU): a number (GHOST_WORK_RATIO), contract "
        "(ghost when T^2 < d_in d_out), direct or ghost (default: the library's choose_method)",
    )
    p.set_defaults(reps=5)
    main_guard(run, p)
