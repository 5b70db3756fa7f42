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

``--views``: copies against views (``select``/``order`` with and without ``--view``) on a dataset of
``--gb`` GB of uint16 tokens written under ``--dir`` (deleted at the end): the time and the bytes each
writes, then the pretraining step (a small decoder, one :class:`~lqs_megatron.training.step.TrainStep`
per batch of the packed sample stream, what ``lqs pretrain`` runs) reading the ordered selection from
the view against from the copy: the median time to fetch a batch and the median step time, data included.

    python benchmarks/bench_curate.py --views [--gb 1.5] [--dir /tmp] [--steps 30] [--threads 1]
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


def _bytes(prefix: str) -> int:
    """Bytes of every file an output prefix has: the dataset or the view and its sidecars."""
    return sum(
        os.path.getsize(p)
        for s in (".bin", ".idx", ".view.json", ".indices.npy", ".scores.npy", ".stats.json", ".meta.jsonl")
        if os.path.exists(p := f"{prefix}{s}")
    )


def write_corpus(prefix: str, gb: float, rng: np.random.Generator, vocab: int) -> tuple[int, int]:
    """``(sequences, tokens)``: sequences of 64-2048 tokens, ids below ``vocab``, about ``gb`` GB of uint16."""
    total = int(gb * 1e9) // 2
    n_seq = written = 0
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        while written < total:
            lengths = rng.integers(64, 2049, size=4096)
            lengths = lengths[np.cumsum(lengths) <= total - written] if lengths.sum() > total - written else lengths
            if not len(lengths):
                break
            w.add_documents(rng.integers(0, vocab, size=int(lengths.sum()), dtype=np.uint16), lengths)
            n_seq, written = n_seq + len(lengths), written + int(lengths.sum())
    return n_seq, written


def views(args) -> None:
    import shutil

    import torch

    from lqs_megatron.models.config import ModelConfig
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.parallel.dims import ParallelDims
    from lqs_megatron.training.data import SampleStream
    from lqs_megatron.training.loss import CausalLMLoss
    from lqs_megatron.training.optim import WarmupCosine, build_optimizer
    from lqs_megatron.training.pretrainer import lm_micro_batches
    from lqs_megatron.training.step import TrainStep

    torch.set_num_threads(args.threads)
    model_cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2)
    gb, steps, batch, seq = (0.002, 3, 4, 32) if args.tiny else (args.gb, args.steps, 8, 512)
    d = tempfile.mkdtemp(prefix="bench_views_", dir=args.dir)
    try:
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        n_seq, n_tok = write_corpus(f"{d}/corpus", gb, rng, model_cfg["vocab_size"])
        t_write = time.perf_counter() - t
        np.save(f"{d}/scores.npy", rng.standard_normal(n_seq).astype(np.float32))
        rows = {}
        for kind, view in (("copy", False), ("view", True)):
            sel, out = f"{d}/{kind}-sel", f"{d}/{kind}-ord"
            t = time.perf_counter()
            curate_dataset(f"{d}/corpus", f"{d}/scores.npy", sel, lambda s: select_top_r(s, args.r), view=view)
            t_sel = time.perf_counter() - t
            t = time.perf_counter()
            curate_dataset(sel, f"{sel}.scores.npy", out, lambda s: folding(s, args.layers), "order", view=view)
            t_ord = time.perf_counter() - t
            rows[kind] = (t_sel, t_ord, _bytes(sel), _bytes(out))
        # the pretraining step on the ordered selection, from the view and from the copy (alternating per step)
        dims = ParallelDims()
        cfg = ModelConfig(**model_cfg)
        streams = {k: SampleStream([f"{d}/{k}-ord"], seq, steps * batch) for k in ("copy", "view")}
        same = all(
            torch.equal(streams["copy"].batch(range(i, i + batch)), streams["view"].batch(range(i, i + batch)))
            for i in range(0, steps * batch, batch)
        )
        fetch: dict[str, list[float]] = {"copy": [], "view": []}
        step_t: dict[str, list[float]] = {"copy": [], "view": []}
        trainers = {}
        for k in ("copy", "view"):
            model = build_model(cfg, dims, seed=0)
            opt = build_optimizer(model, 1e-4)
            trainers[k] = TrainStep(CausalLMLoss(model), dims, opt, WarmupCosine(1e-4, 1e-5, 0, 10**6), 1.0)
        for s in range(steps):
            for k in ("copy", "view"):
                t = time.perf_counter()
                tokens = streams[k].batch(range(s * batch, (s + 1) * batch))
                t_fetch = time.perf_counter() - t
                trainers[k](lm_micro_batches(tokens, batch), batch, s)
                fetch[k].append(t_fetch)
                step_t[k].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    load = os.getloadavg()
    print(f"# machine: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}; torch threads "
          f"{args.threads}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    print(f"# data: {n_seq} sequences, {n_tok / 1e6:.0f}M tokens (uint16, {2 * n_tok / 1e9:.2f} GB) under {args.dir}, "
          f"written in {t_write:.1f} s; select top-r {args.r} then order folding L={args.layers}")  # fmt: skip
    print(f"{'output':<10}{'select s':>10}{'order s':>10}{'select MB':>12}{'order MB':>12}")
    for k, (a, b, c, e) in rows.items():
        print(f"{k:<10}{a:>10.2f}{b:>10.2f}{c / 1e6:>12.2f}{e / 1e6:>12.2f}")
    params = cfg.num_parameters() / 1e6
    print(f"# pretraining from the ordered selection: {steps} steps of {batch} x {seq} tokens, a {params:.2f}M "
          f"decoder; the same batches from both: {same}")  # fmt: skip
    print(f"{'read from':<10}{'fetch ms (median)':>20}{'step ms (median, data included)':>34}")
    for k in ("copy", "view"):
        print(f"{k:<10}{statistics.median(fetch[k]) * 1e3:>20.2f}{statistics.median(step_t[k]) * 1e3:>34.1f}")
    if not same:
        raise SystemExit("bench_curate: error: the view and the copy gave different batches")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--r", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="smoke-test size: 300 sequences, one run (and --views)")
    ap.add_argument("--views", action="store_true", help="copies against views, and pretraining from each")
    ap.add_argument("--gb", type=float, default=1.5, help="--views: dataset size in GB of tokens")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="--views: where the dataset is written")
    ap.add_argument("--steps", type=int, default=30, help="--views: pretraining steps timed per source")
    ap.add_argument("--threads", type=int, default=1, help="--views: torch CPU threads")
    args = ap.parse_args()
    if args.views:
        views(args)
        return
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
    if args.tiny:  # the smoke test covers the views part too
        views(args)


if __name__ == "__main__":
    main()
