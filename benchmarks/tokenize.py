"""`lqs tokenize` vs a Megatron-LM ``tools/preprocess_data.py``-style baseline: same corpus, tokenizer, cores.

The baseline is written the way Megatron-LM's preprocessing works (re-implemented here, not
imported): a ``multiprocessing.Pool(workers)`` whose initializer loads the tokenizer,
``pool.imap(encode, lines, 32)`` over the text lines of the jsonl, each worker doing
``json.loads`` + ``tokenizer(text).input_ids`` + EOD per document and returning Python
lists, and the main process appending each document with megatron-core's own
``IndexedDatasetBuilder.add_document`` (a Python-side writer). Ours is
:func:`lqs_megatron.data.tokenize.tokenize_files` (what ``lqs tokenize`` runs): raw line
batches to worker processes, each batch encoded through the native word cache (each distinct
word encoded once per process by the Rust tokenizer, ``data/word_cache.py``) where the tokenizer
qualifies, else one batched encode in the Rust tokenizer; flat numpy arrays back, the native
builder writing. ``lqs tokenize --no-word-cache`` is measured too.

Both run on the same ``--cores`` cores (CPU affinity, inherited by the workers) with
``--workers`` worker processes each, on the same corpus: documents made from Python's own
documentation (the ``pydoc_data`` topics and the standard library's docstrings), cut into
paragraphs and recombined with variation into a multi-MB jsonl. The tokenizer is a
sentencepiece BPE trained on that corpus (``--vocab-size``), or ``--tokenizer DIR``. The
outputs are checked to be byte-identical. Prints docs/s, tokens/s and MB/s of each and the
ratios (best of ``--repeats`` runs), and the CPU seconds each spent, all processes together
and (in parentheses) its main process alone: the baseline's main process (unpickling
Python lists, the Python-side writer) is a serial stage that bounds its throughput
whatever the worker count. On a machine shared with other jobs the wall-clock ratio is
noisy (a tool with more runnable processes gets a larger share of the cores); the CPU
figures are steadier.

    python benchmarks/tokenize.py [--mb 24] [--workers 2] [--cores 2] [--repeats 2] [--tokenizer-kind bytelevel]
"""

# This file is named after the command it measures; drop its directory from the import path
# first, so that it does not shadow the standard library's ``tokenize`` module.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import contextlib
import importlib
import inspect
import io
import json
import multiprocessing
import platform
import random
import resource
import subprocess
import tempfile
import time
import warnings

import numpy as np

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


# ----------------------------------------------------------------------------- baseline


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


def run_baseline(corpus: str, tokenizer_dir: str, out_prefix: str, workers: int) -> None:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    encoder = MegatronStyleEncoder(tokenizer_dir)
    with open(corpus, encoding="utf-8") as fin:
        pool = multiprocessing.Pool(workers, initializer=encoder.initializer)
        encoded = pool.imap(encoder.encode, fin, 32)
        builder = IndexedDatasetBuilder(f"{out_prefix}.bin", dtype=DType.optimal_dtype(len(tok)))
        for doc, sentence_lens, _ in encoded:
            for key in doc:
                builder.add_document(doc[key], sentence_lens[key])
        builder.finalize(f"{out_prefix}.idx")
        pool.close()
        pool.join()


def train_bytelevel(texts: list[str], out_dir: str, vocab_size: int) -> None:
    """A GPT-2 style byte-level BPE (regex pre-tokenizer, EOS ``<|endoftext|>``) saved for ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special[0]).save_pretrained(out_dir)


# ----------------------------------------------------------------------------- driver


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU time of (this process, its finished children: the workers of both tools)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mb", type=float, default=24.0, help="corpus size in MB of jsonl")
    p.add_argument("--workers", type=int, default=2, help="worker processes of each tool")
    p.add_argument("--cores", type=int, default=2, help="CPU cores both tools are pinned to")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best is reported")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: train one on the corpus)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of the trained tokenizer")
    p.add_argument(
        "--tokenizer-kind",
        choices=("sentencepiece", "bytelevel"),
        default="sentencepiece",
        help="the tokenizer trained on the corpus: `lqs train-tokenizer`'s sentencepiece BPE (Llama-2/Mistral "
        "style, no pre-tokenizer) or a GPT-2/Llama-3 style byte-level BPE (regex pre-tokenizer)",
    )
    p.add_argument("--workdir", default=None, help="where the corpus and outputs go (default: a temp dir)")
    args = p.parse_args()

    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # heavy imports of both sides happen here, outside the timed runs
    warnings.filterwarnings("ignore")  # megatron-core's notes about Transformer Engine / Apex
    import megatron.core.datasets.indexed_dataset  # noqa: F401
    import transformers  # noqa: F401

    from lqs_megatron.data.jsonl import read_texts
    from lqs_megatron.data.tokenize import tokenize_files
    from lqs_megatron.data.train_tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        n_docs, n_bytes = make_corpus(corpus, args.mb)
        tok_dir = args.tokenizer
        if tok_dir is None:
            tok_dir = os.path.join(tmp, "tokenizer")
            sample = [t for i, (_, _, t) in enumerate(read_texts(corpus, "text")) if i < 2000]
            if args.tokenizer_kind == "sentencepiece":
                train_tokenizer(sample, tok_dir, vocab_size=args.vocab_size, num_threads=len(cpus))
            else:
                train_bytelevel(sample, tok_dir, args.vocab_size)
        kind = args.tokenizer or args.tokenizer_kind
        print(f"corpus: {n_docs} documents, {n_bytes / 1e6:.1f} MB of jsonl; tokenizer: {kind}")
        print(f"machine: {cpu_name()}, pinned to {len(cpus)} cores; {args.workers} workers each; python "
              f"{platform.python_version()}")  # fmt: skip

        runs = {
            "baseline (Megatron-LM preprocess_data style)": lambda out: run_baseline(
                corpus, tok_dir, out, args.workers
            ),
            "lqs tokenize": lambda out: tokenize_files(
                corpus, "text", tok_dir, out, workers=args.workers, progress=False
            ),
            "lqs tokenize --no-word-cache": lambda out: tokenize_files(
                corpus, "text", tok_dir, out, workers=args.workers, progress=False, word_cache=False
            ),
        }
        outputs = {name: os.path.join(tmp, f"out{i}") for i, name in enumerate(runs)}
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        main_cpu: dict[str, float] = {}
        for rep in range(args.repeats):
            for name, fn in runs.items() if rep % 2 == 0 else reversed(runs.items()):
                out = outputs[name]
                (m0, w0), t0 = cpu_seconds(), time.perf_counter()
                fn(out)
                seconds = time.perf_counter() - t0
                (m1, w1) = cpu_seconds()
                if seconds < best.get(name, float("inf")):
                    best[name], cpu[name], main_cpu[name] = seconds, (m1 - m0) + (w1 - w0), m1 - m0
        first = outputs["baseline (Megatron-LM preprocess_data style)"]
        same = all(
            open(first + e, "rb").read() == open(out + e, "rb").read()
            for out in outputs.values()
            for e in (".bin", ".idx")
        )
        tokens = int(np.fromfile(first + ".idx", dtype=np.int32, count=n_docs, offset=34).sum())
        print(f"outputs byte-identical: {same}; {tokens} tokens")
        base = best["baseline (Megatron-LM preprocess_data style)"]
        base_cpu = cpu["baseline (Megatron-LM preprocess_data style)"]
        print("\n| tool | seconds | docs/s | tokens/s | MB/s | vs baseline | CPU s (main) | docs/CPU s vs baseline |")
        print("|---|---|---|---|---|---|---|---|")
        for name, sec in best.items():
            c = f"{cpu[name]:.2f} ({main_cpu[name]:.2f})"
            print(f"| {name} | {sec:.2f} | {n_docs / sec:,.0f} | {tokens / sec:,.0f} | {n_bytes / 1e6 / sec:.2f} | "
                  f"{base / sec:.2f}x | {c} | {base_cpu / cpu[name]:.2f}x |")  # fmt: skip
        if not same:
            sys.exit("the outputs differ")


if __name__ == "__main__":
    main()
