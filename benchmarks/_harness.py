"""The one benchmark harness of ``benchmarks/``: median time, peak memory, ratios to baselines.

A script builds its inputs, then gives each case's implementations to a :class:`Table`, which
times them (median of many runs, round-robin: CUDA events around each call on a GPU, with the L2
cache flushed before it; ``perf_counter`` on the CPU), measures the peak memory each allocates
(``torch.cuda.max_memory_allocated`` on a GPU), and prints a markdown row with the speed-up and
memory ratio against the case's baselines (measured in the same run). The header names the machine
(GPU name or ``lscpu`` model name) and the versions. ``--json PATH`` also writes the rows, and the
headline figures a script records with :func:`record`, as JSON lines (``gpu_table.py`` reads them).
``--tiny`` asks a script for its smoke-test sizes (seconds on a CPU; ``scripts/gpu_check.sh --dry-run``).
:func:`largest_batch` finds the largest batch whose peak memory fits a budget, out-of-memory safe.

    table = Table("per-example loss", baselines=["materialised"], args=args)
    table.case("B=8 T=128", {"materialised": lambda: ..., "fused": lambda: ...})
    table.finish()
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the harness's common flags; scripts add their own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--reps", type=int, default=10, help="timed runs per measurement on the CPU")
    p.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="CPU statistic of the timed runs (min is steadier on a loaded machine)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also append the rows and headline figures as JSON lines to this file")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: seconds on a CPU (gpu_check.sh --dry-run)")
    p.add_argument("--quick", action="store_true", help="only the first (headline) shape of a shape list")
    return p


def machine(device: str) -> str:
    """The GPU's name, or the CPU's ``lscpu`` model name with its core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def versions() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    if torch.cuda.is_available():
        parts.append(f"cuda {torch.version.cuda}")
    return ", ".join(parts)


def time_ms(fns: dict[str, Callable[[], object]], device: str, reps: int = 10, stat: str = "median") -> dict:
    """Wall time of each ``fn()`` in milliseconds after warm-up: median (or ``stat="min"``) of the runs.

    The functions are timed round-robin, so a change in machine load hits them alike. CPU: ``reps``
    runs each, ``perf_counter``. CUDA: CUDA events around each call, the L2 cache flushed before it,
    at least ``reps`` runs each and about 100 ms of them (at most 200).
    """
    if device.startswith("cuda"):
        return _cuda_time_ms(fns, reps, stat)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (allocator, lazy init)
    for _ in range(max(reps, 1)):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: _stat(v, stat) for k, v in times.items()}


def _stat(v: list[float], stat: str) -> float:
    return min(v) if stat == "min" else statistics.median(v)


def _cuda_time_ms(fns: dict[str, Callable[[], object]], reps: int, stat: str) -> dict:
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")  # larger than any L2 cache
    for f in fns.values():  # warm-up: compilation, autotuning, allocator
        f()
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    one_round = max((time.perf_counter() - t0) * 1e3, 1e-3)
    n = int(min(200, max(reps, 100.0 / one_round)))
    events = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            end.record()
            events[k].append((start, end))
    torch.cuda.synchronize()
    return {k: _stat([s.elapsed_time(e) for s, e in ev], stat) for k, ev in events.items()}


class _LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage allocated by torch ops inside the mode and still alive; tracks the peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: dict[int, weakref.finalize] = {}

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: not an allocation
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key, n = st.data_ptr(), st.nbytes()
                if n and key not in self._seen and key not in inputs:
                    self._seen[key] = weakref.finalize(st, self._free, key, n)
                    self.live += n
                    self.peak = max(self.peak, self.live)
        return out


def peak_mib(fn: Callable[[], object], device: str) -> float:
    """Peak memory that ``fn()`` allocates beyond what exists before it, in MiB.

    CUDA: the caching allocator's peak. CPU: the peak of live tensor storage created by torch ops
    during ``fn`` (tracked with a dispatch mode; memory that a single op uses internally is not seen).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _LiveBytes() as mode:
        fn()
    return mode.peak / 2**20


def shapes(args: argparse.Namespace, tiny: list, cpu: list, gpu: list) -> list:
    """The shape list a script runs: ``tiny`` with ``--tiny``, else the device's (first only with ``--quick``)."""
    out = tiny if args.tiny else gpu if args.device.startswith("cuda") else cpu
    return out[:1] if args.quick else out


def peak_mib_or_inf(fn: Callable[[], object], device: str) -> float:
    """:func:`peak_mib`, or ``inf`` when ``fn`` runs out of GPU memory (the cache is emptied after)."""
    try:
        return peak_mib(fn, device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("inf")


def largest_batch(
    peak: Callable[[int], float], budget_mib: float, start: int = 2, cap: int = 4096
) -> tuple[int, float]:
    """Largest batch ``B <= cap`` with ``peak(B) <= budget_mib`` and that peak (MiB).

    ``peak(B)`` is the peak memory of one call at batch ``B`` (``inf`` when it runs out of memory, as
    :func:`peak_mib_or_inf` gives). Memory is affine in the batch: fitted from ``start`` and
    ``2 start``, then checked at the batch the fit predicts, shrunk (by the overshoot, or halved after
    an out-of-memory) until it fits. Never returns less than a batch already measured to fit.
    """
    fits: dict[int, float] = {}

    def measure(b: int) -> float:
        m = peak(b)
        if m <= budget_mib:
            fits[b] = m
        return m

    b1, b2 = start, 2 * start
    m1, m2 = measure(b1), measure(b2)
    if math.isfinite(m1) and math.isfinite(m2):
        per = max((m2 - m1) / (b2 - b1), 1e-3)
        B = int(max(1, min(cap, (budget_mib - (m1 - per * b1)) // per)))
    else:
        B = b1 // 2 if not math.isfinite(m1) else b1
    while B > max(fits, default=0):
        mem = measure(B)
        if mem <= budget_mib:
            break
        B = max(1, int(B * budget_mib / mem * 0.95)) if math.isfinite(mem) else B // 2
        if B < 1:
            break
    if not fits and B >= 1:
        measure(1)
    if not fits:
        raise RuntimeError(f"no batch fits {budget_mib:.0f} MiB (batch 1 needs {peak(1):.0f} MiB)")
    best = max(fits)
    return best, fits[best]


def record(args: argparse.Namespace, figure: str, value: float, unit: str = "", **context) -> None:
    """Append one headline figure (``figure`` id, ``value``, ``unit``, context) to ``--json`` if given."""
    if getattr(args, "json", None):
        rec = {
            "figure": figure,
            "value": value,
            "unit": unit,
            "machine": machine(args.device),
            "versions": versions(),
            **context,
        }
        with open(args.json, "a") as f:
            f.write(json.dumps(rec) + "\n")


@dataclass
class Row:
    case: str
    name: str
    ms: float
    peak_mib: float
    ratios: dict = field(default_factory=dict)  # baseline name -> (speed-up, memory ratio)


class Table:
    """Rows of one benchmark; ratios against the named baselines of the same case."""

    def __init__(self, title: str, baselines: list[str], args: argparse.Namespace):
        self.title, self.baselines, self.args = title, baselines, args
        self.rows: list[Row] = []
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"## {title}\n\nmachine: {machine(args.device)}; {versions()}\n")
        cols = " | ".join(f"speed-up vs {b} | memory vs {b}" for b in baselines)
        print(f"| case | implementation | {args.stat} ms | peak MiB | {cols} |")
        print("|" + "---|" * (4 + 2 * len(baselines)))

    def case(self, case: str, fns: dict[str, Callable[[], object]], memory: bool = True) -> list[Row]:
        """Time the implementations ``fns`` (name -> callable) of one case and measure their peak memory;
        print and keep one row each, with ratios against the baselines among them."""
        ms = time_ms(fns, self.args.device, self.args.reps, self.args.stat)
        rows = [Row(case, k, ms[k], peak_mib(f, self.args.device) if memory else float("nan")) for k, f in fns.items()]
        by_name = {r.name: r for r in rows}
        for row in rows:
            for b in self.baselines:
                ref = by_name.get(b)
                if ref is not None and ref is not row:
                    mem = row.peak_mib / ref.peak_mib if ref.peak_mib else float("nan")
                    row.ratios[b] = (ref.ms / row.ms, mem)
            cells = " | ".join(
                f"{row.ratios[b][0]:.2f}x | {row.ratios[b][1]:.2f}x" if b in row.ratios else "- | -"
                for b in self.baselines
            )
            print(f"| {case} | {row.name} | {row.ms:.2f} | {row.peak_mib:.1f} | {cells} |", flush=True)
        self.rows.extend(rows)
        return rows

    def finish(self) -> None:
        print()
        if self.args.json:
            with open(self.args.json, "a") as f:
                for r in self.rows:
                    rec = {
                        "title": self.title,
                        "machine": machine(self.args.device),
                        "versions": versions(),
                        **asdict(r),
                    }
                    f.write(json.dumps(rec) + "\n")


def main_guard(run: Callable[[argparse.Namespace], None], p: argparse.ArgumentParser) -> None:
    """Parse the flags and run; exit non-zero with one line if the device is missing."""
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"{p.prog}: error: --device {args.device} but no CUDA device is available")
    run(args)
