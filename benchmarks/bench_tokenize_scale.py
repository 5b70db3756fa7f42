"""Memory at scale: ``lqs tokenize --workers 2`` on a multi-GB jsonl and on the same records as parquet.

Generates, under ``--dir`` (default ``/tmp/lqs-scale``; deleted at the end unless ``--keep``), a jsonl
of about ``--gb`` GB of real English documents (paragraphs of Python's own documentation recombined
with variation, each record ``{"text", "source", "url"}``) and a parquet file holding the same records
(row groups of ``--row-group-mb`` MB of text; uncompressed by default, so the file is about as big
as the jsonl: ``--parquet-compression snappy`` for pyarrow's default), trains a sentencepiece BPE
tokenizer (``lqs train-tokenizer``, 8,000 pieces by default, on the first 20 MB),
then runs ``lqs tokenize`` on each as a subprocess and reports:

- **peak RSS of the whole process tree** (the ``lqs`` process and its worker processes), sampled
  from ``/proc/PID/status`` every 0.2 s: the largest sum of ``VmRSS`` over the tree seen at one
  sample (an upper bound: pages the forked workers share copy-on-write with the parent count
  twice), and the largest sum of ``Pss`` (``/proc/PID/smaps_rollup``: shared pages split between
  the processes that share them, the tree's real footprint);
- the kernel's own high-water marks, which miss nothing between samples: the largest ``VmHWM`` of
  one process of the tree, and the sum of every process's ``VmHWM`` (an upper bound of the tree's
  peak: the processes may peak at different moments);
- docs/s, MB/s and tokens/s (from ``PREFIX.stats.json``) and the wall time; that the two outputs
  are byte-identical (checked with a streamed SHA-256).

The goal (issue 12) is a peak tree RSS under 2 GB for 10 GB inputs. One command, a printed table::

    nice -n 19 python benchmarks/bench_tokenize_scale.py --gb 10            # the full-size run
    python benchmarks/bench_tokenize_scale.py --gb 0.2                      # a quick check
    python benchmarks/bench_tokenize_scale.py --tiny                        # seconds: what the tests run
"""

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paragraphs() -> list[str]:
    import pydoc_data.topics

    out = []
    for text in pydoc_data.topics.topics.values():
        out.extend(p.strip() for p in text.split("\n\n") if len(p.strip()) > 40)
    return out


def records(seed: int = 0):
    """An endless stream of ``{"text", "source", "url"}`` documents of 1-8 paragraphs (about 2 KB mean)."""
    rng = random.Random(seed)
    paras = paragraphs()
    sources = ["docs", "faq", "howto", "reference"]
    k = 0
    while True:
        n = rng.randint(1, 8)
        text = "\n\n".join(rng.choice(paras) for _ in range(n))
        if rng.random() < 0.3:
            text = f"[{k}] " + text  # variation: no two documents alike
        yield {"text": text, "source": rng.choice(sources), "url": f"https://docs.example/{k}"}
        k += 1


def write_corpus(jsonl: str, parquet: str, target_bytes: int, row_group_bytes: int, compression: str) -> dict:
    """Write the same records to ``jsonl`` and ``parquet`` until the jsonl holds ``target_bytes``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("source", pa.string()), ("url", pa.string())])
    written = docs = 0
    group: list[dict] = []
    group_bytes = 0
    t0 = time.time()
    codec = None if compression == "none" else compression
    pw = pq.ParquetWriter(parquet, schema, compression=codec, use_dictionary=codec is not None)
    with open(jsonl, "wb", buffering=1 << 22) as f, pw:
        for rec in records():
            line = json.dumps(rec, ensure_ascii=False).encode() + b"\n"
            f.write(line)
            written += len(line)
            docs += 1
            group.append(rec)
            group_bytes += len(line)
            if group_bytes >= row_group_bytes:
                pw.write_table(pa.Table.from_pylist(group, schema=schema), row_group_size=len(group))
                group, group_bytes = [], 0
            if written >= target_bytes:
                break
        if group:
            pw.write_table(pa.Table.from_pylist(group, schema=schema), row_group_size=len(group))
    return {
        "documents": docs,
        "jsonl_bytes": os.path.getsize(jsonl),
        "parquet_bytes": os.path.getsize(parquet),
        "row_groups": pq.ParquetFile(parquet).metadata.num_row_groups,
        "seconds": time.time() - t0,
    }


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (via /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the RSS and PSS sums of a process tree every ``interval`` seconds; keeps the peaks (KiB)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = self.max_procs = 0
        self.hwm: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            self.peak_pss = max(self.peak_pss, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            for p in pids:
                self.hwm[p] = max(self.hwm.get(p, 0), _kb(f"/proc/{p}/status", "VmHWM:"))
            time.sleep(self.interval)


def run_tokenize(inp: str, tokenizer: str, out: str, workers: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "lqs_megatron",
        "tokenize",
        "--input",
        inp,
        "--tokenizer",
        tokenizer,
        "--out",
        out,
        "--workers",
        str(workers),
        "--keep-fields",
        "source,url",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = TreeMemory(proc.pid)
    mon.start()
    stdout, stderr = proc.communicate()
    mon.done.set()
    mon.join()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lqs tokenize failed ({proc.returncode}):\n{stderr[-3000:]}")
    stats = json.load(open(f"{out}.stats.json"))
    return {
        "wall_s": wall,
        "peak_tree_rss_mb": mon.peak_rss / 1024,
        "peak_tree_pss_mb": mon.peak_pss / 1024,
        "max_process_hwm_mb": max(mon.hwm.values(), default=0) / 1024,
        "sum_hwm_mb": sum(mon.hwm.values()) / 1024,
        "processes": mon.max_procs,
        "documents": stats["documents"],
        "tokens": stats["tokens"],
        "docs_per_s": stats["docs_per_s"],
        "tokens_per_s": stats["tokens_per_s"],
        "sha256": _digest(f"{out}.bin") + _digest(f"{out}.idx"),
    }


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=10.0, help="size of the jsonl in GB (1e9 bytes)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/lqs-scale", help="scratch directory (created; deleted at the end)")
    ap.add_argument("--row-group-mb", type=float, default=128.0, help="text per parquet row group")
    ap.add_argument("--vocab-size", type=int, default=8000, help="pieces of the trained tokenizer")
    ap.add_argument(
        "--parquet-compression",
        default="none",
        help="parquet codec: none (the file is about as big as the jsonl), snappy (pyarrow's default), zstd, ...",
    )
    ap.add_argument("--tokenizer", default=None, help="an existing tokenizer directory (default: train one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a seconds-long check of the script itself (5 MB, 1,000 "
        "pieces, a fresh scratch directory): what the test suite runs",
    )
    args = ap.parse_args()
    if args.tiny:
        import tempfile

        args.gb, args.row_group_mb, args.vocab_size = 0.005, 1.0, 1000
        args.dir = tempfile.mkdtemp(prefix="lqs-scale-tiny-")
    os.makedirs(args.dir, exist_ok=True)
    jsonl, parquet = os.path.join(args.dir, "corpus.jsonl"), os.path.join(args.dir, "corpus.parquet")
    try:
        corpus = write_corpus(
            jsonl, parquet, int(args.gb * 1e9), int(args.row_group_mb * 1e6), args.parquet_compression
        )
        print(
            f"corpus: {corpus['documents']:,} documents, jsonl {corpus['jsonl_bytes'] / 1e9:.2f} GB, parquet "
            f"{corpus['parquet_bytes'] / 1e9:.2f} GB in {corpus['row_groups']} row groups "
            f"(written in {corpus['seconds']:.0f} s)",
            flush=True,
        )
        tok = args.tokenizer
        if tok is None:
            tok = os.path.join(args.dir, "tokenizer")
            sample = os.path.join(args.dir, "sample.jsonl")
            with open(jsonl, "rb") as src, open(sample, "wb") as dst:
                dst.write(src.read(20_000_000).rsplit(b"\n", 1)[0] + b"\n")
            trained = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "lqs_megatron",
                    "train-tokenizer",
                    "--input",
                    sample,
                    "--vocab-size",
                    str(args.vocab_size),
                    "--out",
                    tok,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if trained.returncode != 0:
                raise SystemExit(f"lqs train-tokenizer failed:\n{trained.stderr[-2000:]}")
        rows = {}
        for name, inp in (("jsonl", jsonl), ("parquet", parquet)):
            out = os.path.join(args.dir, f"out-{name}")
            rows[name] = run_tokenize(inp, tok, out, args.workers)
            r = rows[name]
            print(
                f"{name}: {r['wall_s']:.0f} s, peak tree RSS {r['peak_tree_rss_mb']:.0f} MB (PSS "
                f"{r['peak_tree_pss_mb']:.0f} MB), largest process {r['max_process_hwm_mb']:.0f} MB",
                flush=True,
            )
            if name == "jsonl":  # keep only one output at a time on disk (the digest is kept)
                for ext in (".bin", ".idx", ".meta.jsonl"):
                    os.unlink(out + ext)
        print()
        print(
            f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.python_version()}; "
            f"--workers {args.workers}; jsonl {corpus['jsonl_bytes'] / 1e9:.2f} GB"
        )
        head = f"{'input':8} {'size GB':>8} {'docs':>11} {'tokens':>14} {'docs/s':>8} {'MB/s':>6} {'wall s':>7} "
        head += f"{'tree RSS MB':>12} {'tree PSS MB':>12} {'max proc MB':>12} {'sum HWM MB':>11}"
        print(head)
        for name, r in rows.items():
            size = corpus[f"{name}_bytes"]
            print(
                f"{name:8} {size / 1e9:8.2f} {r['documents']:11,} {r['tokens']:14,} {r['docs_per_s']:8.0f} "
                f"{corpus['jsonl_bytes'] / 1e6 / r['wall_s']:6.1f} {r['wall_s']:7.0f} {r['peak_tree_rss_mb']:12.0f} "
                f"{r['peak_tree_pss_mb']:12.0f} {r['max_process_hwm_mb']:12.0f} {r['sum_hwm_mb']:11.0f}"
            )
        same = rows["jsonl"]["sha256"] == rows["parquet"]["sha256"]
        print(f"outputs byte-identical: {same}")
        if not same:
            raise SystemExit("the jsonl and parquet outputs differ")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
