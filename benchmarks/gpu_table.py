"""One markdown table of the GPU check's figures, each with its goal (issue 10), from the benchmarks' JSON.

``scripts/gpu_check.sh`` runs each part with ``--json OUT/json/PART.jsonl`` and notes each part's exit
status in ``OUT/status.tsv``; this script reads both and prints the parts (status, seconds, log) and
every listed figure (value, goal, met or not). A figure whose part failed or did not run shows as
missing, with the part's status, so one failure leaves the other figures readable.

    python benchmarks/gpu_table.py [gpu_check_out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# (figure id, part, what it measures, format, goal text, test of the goal or None when no goal is set)
FIGURES = [
    (
        "annotate.ours.time_ratio",
        "annotate",
        "Annotation: <g,lambda> and |g| of a proxy batch, time / one plain fwd+bwd",
        "{:.3f}x",
        "<= 1.15x",
        lambda v: v <= 1.15,
    ),
    (
        "annotate.ours.memory_ratio",
        "annotate",
        "Annotation: peak memory / one plain fwd+bwd",
        "{:.3f}x",
        "<= 1.15x",
        lambda v: v <= 1.15,
    ),
    (
        "annotate.ours.largest_batch",
        "annotate",
        "Annotation: largest proxy batch in the GPU's memory (ours)",
        "{:.0f}",
        "",
        None,
    ),
    (
        "annotate.vmap.largest_batch",
        "annotate",
        "Annotation: largest batch of DELT-style vmap(grad)",
        "{:.0f}",
        "",
        None,
    ),
    (
        "annotate.ours.examples_per_s",
        "annotate",
        "Annotation: proxy examples/s at our largest batch",
        "{:,.1f}",
        "",
        None,
    ),
    (
        "annotate.throughput_ratio",
        "annotate",
        "Annotation: examples/s, ours / vmap(grad), each at its largest batch",
        "{:.2f}x",
        ">= 3x",
        lambda v: v >= 3,
    ),
    (
        "kernels.loss.fwd_bwd.speedup",
        "kernels-loss",
        "Fused per-example loss fwd+bwd: speed-up vs materialised logits + cross-entropy",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.loss.fwd_bwd.memory_ratio",
        "kernels-loss",
        "Fused per-example loss fwd+bwd: memory / materialised",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.linear.direct.speedup_vs_reference",
        "kernels-grad-stats",
        "Grad-stats direct (Triton): speed-up vs the torch reference",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.linear.ghost.speedup_vs_reference",
        "kernels-grad-stats",
        "Grad-stats ghost (Triton): speed-up vs the torch reference",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.linear.direct.vs_wgrad_gemm",
        "kernels-grad-stats",
        "Grad-stats direct (Triton): time / the skipped weight-gradient GEMM",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.lm_head.time_vs_fwd_bwd",
        "kernels-lm-head",
        "LM head loss + statistics: time / materialised head fwd+bwd",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "kernels.lm_head.memory_vs_fwd_bwd",
        "kernels-lm-head",
        "LM head loss + statistics: memory / materialised",
        "{:.2f}x",
        "",
        None,
    ),
    ("pretrain.ours.tokens_per_s", "pretrain", "Pretrain: tokens/s (lqs TrainStep)", "{:,.0f}", "", None),
    (
        "pretrain.ours.mfu",
        "pretrain",
        "Pretrain: MFU against the dense bf16 peak",
        "{:.1%}",
        ">= 40%",
        lambda v: v >= 0.40,
    ),
    (
        "pretrain.speedup",
        "pretrain",
        "Pretrain: tokens/s vs the transformers loop",
        "{:.2f}x",
        ">= 1.3x",
        lambda v: v >= 1.3,
    ),
    (
        "pretrain-compile.ours.mfu",
        "pretrain-compile",
        "Pretrain, torch.compile: MFU",
        "{:.1%}",
        ">= 40%",
        lambda v: v >= 0.40,
    ),
    (
        "pretrain-compile.speedup",
        "pretrain-compile",
        "Pretrain, torch.compile (both): vs the transformers loop",
        "{:.2f}x",
        ">= 1.3x",
        lambda v: v >= 1.3,
    ),
    (
        "score.ours.tokens_per_s",
        "score",
        "Scorer inference: tokens/s per GPU (length-bucketed)",
        "{:,.0f}",
        ">= 1,000,000",
        lambda v: v >= 1e6,
    ),
    ("score.speedup", "score", "Scorer inference: vs a padded transformers loop", "{:.2f}x", ">= 2x", lambda v: v >= 2),
    (
        "score-compile.ours.tokens_per_s",
        "score-compile",
        "Scorer inference, torch.compile: tokens/s per GPU",
        "{:,.0f}",
        ">= 1,000,000",
        lambda v: v >= 1e6,
    ),
    (
        "score-compile.speedup",
        "score-compile",
        "Scorer inference, torch.compile: vs the padded transformers loop",
        "{:.2f}x",
        ">= 2x",
        lambda v: v >= 2,
    ),
    (
        "online.dot.vs_plain_cb",
        "online",
        "Online selection (dot): step time / a plain step on all C B candidates",
        "{:.2f}x",
        "",
        None,
    ),
    (
        "online.greedy.vs_plain_cb",
        "online",
        "Online selection (greedy): step time / a plain step on all C B candidates",
        "{:.2f}x",
        "",
        None,
    ),
]


FIGURES += [
    (
        "distopt.zero.state_ratio",
        "distopt",
        "--distributed-optimizer, dp 2: AdamW state per rank / DDP + AdamW's",
        "{:.2f}x",
        "<= 0.6x",
        lambda v: v <= 0.6,
    ),
    ("distopt.ddp.peak_mb_per_rank", "distopt", "DDP + AdamW, dp 2: peak memory per rank MB", "{:,.1f}", "", None),
    (
        "distopt.zero.peak_mb_per_rank",
        "distopt",
        "--distributed-optimizer, dp 2: peak memory per rank MB",
        "{:,.1f}",
        "",
        None,
    ),
    ("distopt.ddp.step_ms", "distopt", "DDP + AdamW, dp 2: step ms", "{:.1f}", "", None),
    ("distopt.zero.step_ms", "distopt", "--distributed-optimizer, dp 2: step ms", "{:.1f}", "", None),
]


def load(out: Path) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    """First record of each figure id, and each part's ``(status, seconds)``."""
    figures: dict[str, dict] = {}
    for f in sorted((out / "json").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "figure" in rec:
                figures.setdefault(rec["figure"], rec)
    parts: dict[str, tuple[str, str]] = {}
    status = out / "status.tsv"
    if status.exists():
        for line in status.read_text().splitlines():
            name, st, secs = (line.split("\t") + ["", ""])[:3]
            parts[name] = (st, secs)
    return figures, parts


def _context(rec: dict) -> str:
    skip = {"figure", "value", "unit", "machine", "versions"}
    return ", ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)


def table(out: Path, note: str = "") -> tuple[str, int]:
    """The markdown (``note`` first, if any), and the number of parts that did not succeed."""
    figures, parts = load(out)
    machines = sorted({r["machine"] for r in figures.values()})
    versions = sorted({r["versions"] for r in figures.values()})
    lines = [note, ""] if note else []
    lines += [f"machine: {'; '.join(machines) or 'unknown'}; {'; '.join(versions)}", ""]
    lines += ["| part | status | seconds | log |", "|---|---|---|---|"]
    for name, (st, secs) in parts.items():
        lines.append(f"| {name} | {st} | {secs} | logs/{name}.log |")
    lines += ["", "| figure | value | goal | met | measured at |", "|---|---|---|---|---|"]
    for fid, part, what, fmt, goal, ok in FIGURES:
        rec = figures.get(fid)
        if rec is None:
            st = parts.get(part, ("did not run", ""))[0]
            lines.append(f"| {what} | missing (part {part}: {st}) | {goal or '-'} | - | - |")
            continue
        met = "-" if ok is None else ("yes" if ok(rec["value"]) else "**no**")
        lines.append(f"| {what} | {fmt.format(rec['value'])} | {goal or '-'} | {met} | {_context(rec)} |")
    failed = sum(1 for st, _ in parts.values() if st != "ok")
    return "\n".join(lines) + "\n", failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "out",
        nargs="?",
        default=os.environ.get("OUT", "gpu_check_out"),
        help="the gpu_check output folder (json/, status.tsv); default: $OUT or gpu_check_out",
    )
    p.add_argument("--note", default="", help="a line printed above the table")
    args = p.parse_args()
    if not Path(args.out).is_dir():
        print(f"gpu_table.py: no {args.out}/ yet: run bash scripts/gpu_check.sh first")
        return
    text, _ = table(Path(args.out), args.note)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
