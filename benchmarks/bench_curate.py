"""Select (top-r) then order (folding): ours vs the DELT tools' way, same data, same machine.

The baseline does what DELT's ``data_selection/top_r.py`` and ``data_ordering/folding.py``
do, written out here (not imported): load the scored jsonl into a list of dicts, sort
by score, keep the top ``r``, write jsonl; load it again, sort, build the ``L`` folding
passes by scanning the list once per pass, write jsonl. Ours runs
:func:`lqs_megatron.curate.apply.curate_dataset` (indexed dataset in and out, which is
what the trainer reads) and :func:`~lqs_megatron.curate.apply.curate_jsonl` (the same
jsonl in and out as the baseline). Each is timed as the median of ``--repeats`` runs;
the ratio is baseline time / our time.

    python benchmarks/bench_curate.py [--sequences 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import numpy as np

from lqs_megatron.curate.apply import curate_dataset, curate_jsonl
from lqs_megatron.curate.ordering import folding
from lqs_megatron.curate.selection import select_top_r
from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter


def baseline_select_top_r(in_path: str, out_path: str, r: float, field: str = "score") -> None:
    with open(in_path, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    k = int(len(data) * r)
    data = sorted(data, key=lambda x: x[field])
    if k < len(data):
        data = data[len(data) - k :]
    with open(out_path, "w", encoding="utf-8") as f:
        for row in data:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def baseline_folding(in_path: str, out_path: str, layers: int, field: str = "score") -> None:
    with open(in_path, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    ranked = sorted(data, key=lambda x: x[field])
    out = []
    for l in range(layers):
        out.extend(ranked[i] for i in range(len(ranked)) if i % layers == l)
    with open(out_path, "w", encoding="utf-8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--r", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="smoke-test size: 300 sequences, one run")
    args = ap.parse_args()
    if args.tiny:
        args.sequences, args.repeats = 300, 1

    rng = np.random.default_rng(0)
    lengths = rng.integers(64, 1025, size=args.sequences)
    scores = rng.standard_normal(args.sequences).astype(np.float32)
    words = [f"w{i}" for i in range(2000)]
    with tempfile.TemporaryDirectory() as d:
        with IndexedDatasetWriter(f"{d}/corpus", np.uint16) as w:
            for n in lengths:
                w.add_document(rng.integers(0, 32000, size=int(n), dtype=np.uint16))
        np.save(f"{d}/scores.npy", scores)
        with open(f"{d}/corpus.jsonl", "w", encoding="utf-8") as f:  # ~4 characters per token, as real text
            for i, n in enumerate(lengths):
                text = " ".join(words[j] for j in rng.integers(0, len(words), size=int(n) * 4 // 3))
                f.write(json.dumps({"text": text, "score": float(str(scores[i]))}) + "\n")
        tokens = int(lengths.sum())
        jsonl_mb = os.path.getsize(f"{d}/corpus.jsonl") / 2**20

        def ours_dataset():
            curate_dataset(f"{d}/corpus", f"{d}/scores.npy", f"{d}/sel", lambda s: select_top_r(s, args.r))
            curate_dataset(f"{d}/sel", f"{d}/sel.scores.npy", f"{d}/ord", lambda s: folding(s, args.layers))

        def ours_jsonl():
            curate_jsonl(f"{d}/corpus.jsonl", f"{d}/osel.jsonl", lambda s: select_top_r(s, args.r))
            curate_jsonl(f"{d}/osel.jsonl", f"{d}/oord.jsonl", lambda s: folding(s, args.layers))

        def baseline():
            baseline_select_top_r(f"{d}/corpus.jsonl", f"{d}/bsel.jsonl", args.r)
            baseline_folding(f"{d}/bsel.jsonl", f"{d}/bord.jsonl", args.layers)

        t_base = median_time(baseline, args.repeats)
        t_ds = median_time(ours_dataset, args.repeats)
        t_js = median_time(ours_jsonl, args.repeats)
        # same records kept, same order (the baseline's jsonl vs ours)
        with open(f"{d}/bord.jsonl", encoding="utf-8") as a, open(f"{d}/oord.jsonl", encoding="utf-8") as b:
            same = [json.loads(x)["score"] for x in a] == [json.loads(x)["score"] for x in b]

    print(f"# machine: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"# data: {args.sequences} sequences, {tokens / 1e6:.1f}M tokens (uint16), jsonl {jsonl_mb:.0f} MiB")
    print(f"# select top-r {args.r} then order folding L={args.layers}; median of {args.repeats}")
    print(f"{'method':<44}{'seconds':>10}{'vs baseline':>14}")
    print(f"{'baseline: DELT-style jsonl tools':<44}{t_base:>10.3f}{1.0:>13.2f}x")
    print(f"{'ours: indexed dataset (.bin/.idx)':<44}{t_ds:>10.3f}{t_base / t_ds:>13.2f}x")
    print(f"{'ours: jsonl in/out':<44}{t_js:>10.3f}{t_base / t_js:>13.2f}x")
    print(f"# same scores in the same output order as the baseline: {same}")
    if not same:
        raise SystemExit("bench_curate: error: our output differs from the baseline's")


if __name__ == "__main__":
    main()
