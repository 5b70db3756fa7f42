"""`lqs tokenize` against the real anchors, side by side: one command, one table.

For each tokenizer family, on the same jsonl corpus, the same tokenizer and the same ``--cores``
CPU cores (affinity, inherited by every process), each tool turns the corpus into a Megatron
indexed dataset (``tok(text).input_ids + [eos]`` per document), and the outputs are compared
byte for byte with the classic one (a difference in ids is explained: which documents, how):

- **classic**: Megatron-LM's ``tools/preprocess_data.py`` way, re-implemented here (not imported):
  ``multiprocessing.Pool(workers)`` whose initializer loads the tokenizer, ``pool.imap(encode,
  lines, 32)``, per document ``json.loads`` + ``tokenizer(text).input_ids`` + EOD, Python lists
  back, megatron-core's ``IndexedDatasetBuilder.add_document`` in the main process.
- **Megatron-LM fast**: Megatron-LM's own ``tools/preprocess_data_fast.py --use-gigatoken
  --append-eod --tokenizer-type HuggingFaceTokenizer``, run from a Megatron-LM checkout
  (``--megatron-lm PATH`` or ``$MEGATRON_LM``) with an interpreter that has its requirements
  (``--megatron-python`` or ``$MEGATRON_PYTHON``; Megatron-LM needs Python >= 3.12, torch,
  transformers, gigatoken); its ``main()`` is timed as its own ``Elapsed time`` line times it.
  Skipped, with the reason printed, when absent. Nothing of it is copied here.
- **gigatoken**: the ``gigatoken`` package directly: ``Tokenizer(dir).encode_files(JsonlFileSource)``
  (its Rust JSONL reader, its thread pool), EOS inserted with numpy, written with our native writer.
  Like Megatron's fast path it applies no post-processor (no BOS).
- **lqs tokenize** (``tokenize_files``, document mode; ``--workers`` worker processes) with each
  encoding it has: the default (``gigatoken`` where it gives the tokenizer's exact ids, else the
  word cache or the backend), ``--no-gigatoken`` (the word cache for sentencepiece-style BPE, the
  tokenizer's backend otherwise) and, for sentencepiece, ``--no-gigatoken --no-word-cache``.

Every run is a fresh process (cold caches for all; imports done before the clock starts, the
tokenizer load inside it), repeated ``--repeats`` times in alternating order. Reported: docs/s
and docs per CPU second (user + system of every process and thread of the tool), median and
[min-max] over the runs, and the ratios of ours to the fastest anchor's medians. On a machine
shared with other jobs wall-clock figures are noisy; the CPU figures are steadier.

Families: ``sentencepiece`` (``lqs train-tokenizer``'s BPE, Llama-2/Mistral style, 32,000 pieces),
``gpt2`` (byte-level BPE with the GPT-2 regex, 50,257) and ``llama3`` (the Llama-3 split regex +
byte-level, 128,000, a BOS template like Llama-3's). The byte-level ones are trained on the
corpus plus the Python standard library's source (sorted files) so that the vocabulary reaches
real sizes. The corpus: documents made from Python's own documentation (``pydoc_data`` topics and
the standard library's docstrings), paragraphs recombined with variation. No hub access.

    python benchmarks/bench_tokenize.py [--mb 24] [--repeats 3] [--families sentencepiece,gpt2,llama3]
        [--megatron-lm PATH --megatron-python PY] [--workdir DIR (keeps corpus and tokenizers)] [--tiny]
"""

import argparse
import contextlib
import glob
import importlib
import inspect
import io
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings

import numpy as np

FAMILIES = ("sentencepiece", "gpt2", "llama3")
VOCAB = {"sentencepiece": 32000, "gpt2": 50257, "llama3": 128000}
TINY_VOCAB = {"sentencepiece": 1000, "gpt2": 1500, "llama3": 2000}
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# ----------------------------------------------------------------------------- corpus


def python_doc_texts() -> list[str]:
    """The pydoc topics and the docstrings of the importable standard library (modules and members)."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip"}
    warnings.simplefilter("ignore")
    for name in sorted(sys.stdlib_module_names):
        if name in skip or name.startswith("_"):
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mod = importlib.import_module(name)
        except BaseException:
            continue
        doc = inspect.getdoc(mod)
        if doc:
            texts.append(doc)
        for attr, obj in sorted(vars(mod).items()):
            if not attr.startswith("_") and getattr(obj, "__module__", None) == name:
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 200:
                    texts.append(doc)
    return texts


def make_corpus(path: str, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Write ~``megabytes`` of jsonl documents (paragraphs recombined, words varied); return (docs, bytes)."""
    rng = random.Random(seed)
    paragraphs = [p for t in python_doc_texts() for p in t.split("\n\n") if p.strip()]
    words = sorted({w for p in paragraphs[:5000] for w in p.split() if w.isalpha()})
    docs = size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            target = int(rng.lognormvariate(7.3, 0.9))  # median ~1.5 kB, long tail
            start = rng.randrange(len(paragraphs))
            parts, n = [], 0
            while n < target:
                p = paragraphs[(start + len(parts)) % len(paragraphs)]
                if rng.random() < 0.3:  # variation: some words swapped for others
                    toks = p.split(" ")
                    for _ in range(max(1, len(toks) // 20)):
                        toks[rng.randrange(len(toks))] = rng.choice(words)
                    p = " ".join(toks)
                parts.append(p)
                n += len(p) + 2
            line = json.dumps({"id": docs, "text": "\n\n".join(parts)}, ensure_ascii=False) + "\n"
            f.write(line)
            docs += 1
            size += len(line.encode())
    return docs, size


def corpus_stats(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n"), len(data)


# ----------------------------------------------------------------------------- tokenizers


def stdlib_sources() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True) if "site-packages" not in p)
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


def train_bytelevel(texts: list[str], out_dir: str, vocab_size: int, llama3: bool) -> None:
    """A GPT-2 style (ByteLevel regex, EOS ``<|endoftext|>``) or Llama-3 style (split regex + ByteLevel,
    ``ignore_merges``, BOS template, EOS ``<|end_of_text|>``) byte-level BPE saved for ``AutoTokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=llama3))
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        special = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(8)]
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        special = ["<|endoftext|>"]
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    if llama3:
        bos = special[0]
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]),
            ]
        )
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=special[1])
    else:
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special[0])
    hf.save_pretrained(out_dir)


def build_tokenizer(family: str, corpus: str, out_dir: str, tiny: bool, cores: int) -> None:
    from lqs_megatron.data.preprocess.jsonl import read_texts
    from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer

    vocab = (TINY_VOCAB if tiny else VOCAB)[family]
    texts = [t for _, _, t in read_texts(corpus, "text")]
    tmp = out_dir + ".tmp"
    if family == "sentencepiece":
        train_tokenizer(texts[:4000], tmp, vocab_size=vocab, num_threads=cores)
    else:
        train_bytelevel(texts + ([] if tiny else stdlib_sources()), tmp, vocab, llama3=family == "llama3")
    os.replace(tmp, out_dir)


# ----------------------------------------------------------------------------- the tools


class MegatronStyleEncoder:
    """Megatron-LM ``tools/preprocess_data.py``'s ``Encoder``: per-document encode in a pool worker."""

    def __init__(self, tokenizer_dir: str, key: str = "text"):
        self.tokenizer_dir, self.key = tokenizer_dir, key

    def initializer(self):
        from transformers import AutoTokenizer

        MegatronStyleEncoder.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)

    def encode(self, json_line: str):
        data = json.loads(json_line)
        text = data[self.key]
        tok = MegatronStyleEncoder.tokenizer
        doc_ids = tok(text).input_ids  # Megatron's _HuggingFaceTokenizer.tokenize
        sentence_lens = [len(doc_ids)]
        doc_ids.append(tok.eos_token_id)  # --append-eod
        sentence_lens[-1] += 1
        return {self.key: doc_ids}, {self.key: sentence_lens}, len(json_line)


def run_classic(corpus: str, tok_dir: str, out: str, workers: int) -> None:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    encoder = MegatronStyleEncoder(tok_dir)
    with open(corpus, encoding="utf-8") as fin:
        pool = multiprocessing.Pool(workers, initializer=encoder.initializer)
        encoded = pool.imap(encoder.encode, fin, 32)
        builder = IndexedDatasetBuilder(f"{out}.bin", dtype=DType.optimal_dtype(len(tok)))
        for doc, sentence_lens, _ in encoded:
            for key in doc:
                builder.add_document(doc[key], sentence_lens[key])
        builder.finalize(f"{out}.idx")
        pool.close()
        pool.join()


def run_gigatoken(corpus: str, tok_dir: str, out: str, workers: int) -> None:
    import gigatoken
    from transformers import AutoTokenizer

    from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter, optimal_dtype
    from lqs_megatron.data.tokenizers.gigatoken_backend import _flat

    hf = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)  # for the EOS id and the dtype
    tok = gigatoken.Tokenizer(tok_dir)
    ids, offsets = _flat(tok.encode_files(gigatoken.JsonlFileSource([corpus], field="text")))
    dtype = optimal_dtype(len(hf))
    tokens = np.insert(ids.astype(dtype, copy=False), offsets[1:], hf.eos_token_id)
    with IndexedDatasetWriter(out, dtype) as writer:
        writer.add_documents(tokens, np.diff(offsets) + 1)


def run_ours(corpus: str, tok_dir: str, out: str, workers: int, **flags) -> str:
    from lqs_megatron.data.preprocess.tokenize import tokenize_files

    return tokenize_files(corpus, "text", tok_dir, out, workers=workers, progress=False, **flags)["encoding"]


CLASSIC, MEGATRON, GIGATOKEN = "classic (Megatron-LM preprocess_data style)", "Megatron-LM fast", "gigatoken"
OURS = {
    "lqs tokenize": {},
    "lqs tokenize --no-gigatoken": {"gigatoken": False},
    "lqs tokenize --no-gigatoken --no-word-cache": {"gigatoken": False, "word_cache": False},
}
ANCHORS = (CLASSIC, MEGATRON, GIGATOKEN)
TOOL_NAMES = {
    "classic": CLASSIC,
    "megatron": MEGATRON,
    "gigatoken": GIGATOKEN,
    "ours": "lqs tokenize",
    "ours-no-gigatoken": "lqs tokenize --no-gigatoken",
    "ours-backend": "lqs tokenize --no-gigatoken --no-word-cache",
}

MEGATRON_DRIVER = r"""
import contextlib, importlib.util, json, os, resource, sys, time
tree, argv = sys.argv[1], sys.argv[2:]
sys.path.insert(0, tree)
path = os.path.join(tree, "tools", "preprocess_data_fast.py")
spec = importlib.util.spec_from_file_location("preprocess_data_fast", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.argv = ["preprocess_data_fast.py", *argv]
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
with contextlib.redirect_stdout(sys.stderr):
    mod.main()
seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"seconds": seconds, "cpu": cpu, "encoding": "gigatoken (Megatron-LM)"}))
"""


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_one(tool: str, corpus: str, tok_dir: str, out: str, workers: int) -> None:
    """The child process of one timed run: imports first, then the clock; prints one JSON line."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")  # megatron-core's notes about Transformer Engine / Apex
    import megatron.core.datasets.indexed_dataset  # noqa: F401
    import transformers  # noqa: F401

    import lqs_megatron.data.preprocess.tokenize  # noqa: F401

    with contextlib.suppress(ImportError):
        import awkward  # noqa: F401
        import gigatoken  # noqa: F401
    c0, t0 = cpu_seconds(), time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        if tool == CLASSIC:
            encoding = run_classic(corpus, tok_dir, out, workers) or "tokenizers (per document)"
        elif tool == GIGATOKEN:
            encoding = run_gigatoken(corpus, tok_dir, out, workers) or "gigatoken (encode_files)"
        else:
            encoding = run_ours(corpus, tok_dir, out, workers, **OURS[tool])
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(json.dumps({"seconds": seconds, "cpu": cpu, "encoding": encoding}))


# ----------------------------------------------------------------------------- driver


def megatron_command(args) -> tuple[list[str] | None, str]:
    """(command prefix for Megatron-LM's fast path, reason when it cannot run)."""
    tree = args.megatron_lm or os.environ.get("MEGATRON_LM")
    if not tree:
        return None, "no Megatron-LM checkout given (--megatron-lm PATH or $MEGATRON_LM)"
    if not os.path.isfile(os.path.join(tree, "tools", "preprocess_data_fast.py")):
        return None, f"{tree} has no tools/preprocess_data_fast.py"
    python = args.megatron_python or os.environ.get("MEGATRON_PYTHON") or sys.executable
    return [python, "-c", MEGATRON_DRIVER, os.path.abspath(tree)], ""


def timed_run(tool: str, corpus: str, tok_dir: str, out: str, args, megatron: list[str] | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if tool == MEGATRON:
        cmd = megatron + ["--input", corpus, "--output-prefix", out, "--json-keys", "text"]
        cmd += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir, "--use-gigatoken"]
        cmd += ["--append-eod"]
        env["PYTHONPATH"] = megatron[3]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--run-one", tool, corpus, tok_dir, out, str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if tool == MEGATRON:  # it names its output PREFIX_text_document
        for ext in (".bin", ".idx"):
            os.replace(f"{out}_text_document{ext}", out + ext)
    return result


def compare(ref: str, out: str) -> str:
    """``identical`` or what differs between two datasets (of the same documents)."""
    same = all(open(ref + e, "rb").read() == open(out + e, "rb").read() for e in (".bin", ".idx"))
    if same:
        return "identical"
    from lqs_megatron.data.datasets.indexed import IndexedDataset

    a, b = IndexedDataset(ref), IndexedDataset(out)
    if len(a) != len(b):
        return f"differs: {len(b)} sequences, classic {len(a)}"
    bad = [i for i in range(len(a)) if not np.array_equal(a[i], b[i])]
    if not bad:
        return "differs in bytes (dtype or header), same ids"
    kinds = set()
    for i in bad:
        x, y = a[i].tolist(), b[i].tolist()
        kinds.add("first id missing (BOS)" if x[1:] == y else "other ids")
    return f"ids differ in {len(bad)}/{len(a)} documents: {', '.join(sorted(kinds))}"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or platform.machine()


def bench_family(family: str, corpus: str, n_docs: int, work: str, args, megatron) -> list[dict]:
    tok_dir = os.path.join(work, f"tokenizer-{family}")
    if not os.path.isdir(tok_dir):
        t0 = time.perf_counter()
        build_tokenizer(family, corpus, tok_dir, args.tiny, args.cores)
        print(f"[{family}] tokenizer trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    tools = [CLASSIC, MEGATRON, GIGATOKEN, *OURS]
    if family != "sentencepiece":  # no word cache applies: the same run as --no-gigatoken
        tools.remove("lqs tokenize --no-gigatoken --no-word-cache")
    chosen = {TOOL_NAMES[t] for t in args.tools.split(",") if t}
    tools = [t for t in tools if t in chosen or t == CLASSIC]  # the classic output is the reference: run once
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    skipped: dict[str, str] = {}
    if megatron[0] is None:
        skipped[MEGATRON] = megatron[1]
    try:
        import gigatoken  # noqa: F401
    except ImportError:
        skipped[GIGATOKEN] = "gigatoken is not installed (pip install 'lqs_megatron[gigatoken]')"
    outs = {t: os.path.join(work, f"out-{family}-{i}") for i, t in enumerate(tools)}
    for rep in range(args.repeats):
        for tool in tools if rep % 2 == 0 else tools[::-1]:
            if tool in skipped or (tool == CLASSIC and CLASSIC not in chosen and runs[CLASSIC]):
                continue
            r = timed_run(tool, corpus, tok_dir, outs[tool], args, megatron[0])
            if "error" in r:
                skipped[tool] = r["error"]
                continue
            runs[tool].append(r)
            print(f"[{family}] {tool}: {r['seconds']:.2f} s, {r['cpu']:.2f} CPU s", file=sys.stderr)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir, local_files_only=True))
    rows = []
    for tool in tools:
        if tool in skipped or not runs[tool]:
            rows.append({"family": family, "vocab": vocab, "tool": tool, "skipped": skipped.get(tool, "no run")})
            continue
        rows.append(
            {
                "family": family,
                "vocab": vocab,
                "tool": tool,
                "encoding": runs[tool][0]["encoding"],
                "docs_s": [n_docs / r["seconds"] for r in runs[tool]],
                "docs_cpu_s": [n_docs / r["cpu"] for r in runs[tool]],
                "output": "reference" if tool == CLASSIC else compare(outs[CLASSIC], outs[tool]),
            }
        )
    for o in outs.values():
        for e in (".bin", ".idx", ".stats.json"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(o + e)
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "\n| family (vocab) | tool | encoding | docs/s median [min-max] | docs per CPU s median [min-max] "
        "| docs/s vs fastest anchor | docs per CPU s vs fastest anchor | output vs classic |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        anchors = [r for r in fam if r["tool"] in ANCHORS and "docs_s" in r]
        best_s = max((statistics.median(r["docs_s"]) for r in anchors), default=None)
        best_c = max((statistics.median(r["docs_cpu_s"]) for r in anchors), default=None)
        for r in fam:
            head = f"| {family} ({r['vocab']:,}) | {r['tool']} |"
            if "skipped" in r:
                print(f"{head} skipped: {r['skipped']} | | | | | |")
                continue
            rs = f"{statistics.median(r['docs_s']) / best_s:.2f}x" if best_s else "n/a"
            rc = f"{statistics.median(r['docs_cpu_s']) / best_c:.2f}x" if best_c else "n/a"
            print(
                f"{head} {r['encoding']} | {spread(r['docs_s'])} | {spread(r['docs_cpu_s'])} | {rs} | {rc} "
                f"| {r['output']} |"
            )
    print("\nall runs (docs/s / docs per CPU s):")
    for r in rows:
        if "docs_s" in r:
            each = ", ".join(f"{s:,.0f}/{c:,.0f}" for s, c in zip(r["docs_s"], r["docs_cpu_s"]))
            print(f"  {r['family']} | {r['tool']}: {each}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run-one":
        tool, corpus, tok_dir, out, workers = sys.argv[2:7]
        run_one(tool, corpus, tok_dir, out, int(workers))
        return
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mb", type=float, default=24.0, help="corpus size in MB of jsonl")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the classic baseline and of ours")
    p.add_argument("--cores", type=int, default=2, help="CPU cores every tool is pinned to")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each tool (median and range reported)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--megatron-lm", default=None, help="a Megatron-LM checkout (default: $MEGATRON_LM)")
    p.add_argument(
        "--megatron-python",
        default=None,
        help="the interpreter to run Megatron-LM with, one with its requirements (default: $MEGATRON_PYTHON, else "
        "this one)",
    )
    p.add_argument("--workdir", default=None, help="keep the corpus and tokenizers here and reuse them (default: temp)")
    p.add_argument(
        "--tools",
        default=",".join(TOOL_NAMES),
        help="comma-separated, of "
        + ", ".join(TOOL_NAMES)
        + " (classic runs at least once: its output is the reference)",
    )
    p.add_argument("--corpus", default=None, help="a jsonl corpus (field `text`) instead of the generated one")
    p.add_argument("--tiny", action="store_true", help="a smoke run: 1 MB, small vocabularies, one repeat")
    args = p.parse_args()
    families = [f for f in args.families.split(",") if f]
    if not set(families) <= set(FAMILIES):
        p.error(f"--families: choose from {', '.join(FAMILIES)}")
    if not set(t for t in args.tools.split(",") if t) <= set(TOOL_NAMES):
        p.error(f"--tools: choose from {', '.join(TOOL_NAMES)}")
    if args.tiny:
        args.mb, args.repeats = min(args.mb, 1.0), 1

    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)
    megatron = megatron_command(args)
    with contextlib.ExitStack() as stack:
        work = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="lqs-bench-tokenize-"))
        os.makedirs(work, exist_ok=True)
        corpus = os.path.abspath(args.corpus) if args.corpus else os.path.join(work, f"corpus-{args.mb:g}mb.jsonl")
        if not os.path.exists(corpus):
            make_corpus(corpus + ".tmp", args.mb)
            os.replace(corpus + ".tmp", corpus)
        n_docs, n_bytes = corpus_stats(corpus)
        print(f"corpus: {n_docs:,} documents, {n_bytes / 1e6:.1f} MB of jsonl")
        print(
            f"machine: {cpu_name()}, pinned to {len(cpus)} of {os.cpu_count()} cores; {args.workers} workers "
            f"(classic, ours); python {platform.python_version()}; load average {os.getloadavg()[0]:.1f} at start; "
            f"{args.repeats} runs of each tool"
        )
        if megatron[0] is None:
            print(f"Megatron-LM fast path skipped: {megatron[1]}")
        rows = []
        for family in families:
            rows += bench_family(family, corpus, n_docs, work, args, megatron)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        print_table(rows)


if __name__ == "__main__":
    main()
