"""`lqs tokenize` on a real corpus: exact ids, modes, inputs, determinism, errors, atomicity."""

import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zstandard

from lqs_megatron.data.datasets.indexed import IndexedDataset, dataset_exists
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize, tokenize_files
from lqs_megatron.data.tokenizers.gigatoken_backend import gigatoken_available
from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
from lqs_megatron.errors import InputError, LQSError
from tests.conftest import demo_texts
from tests.data.conftest import write_jsonl
from tests.utils import REPO, run_lqs


def _files(prefix):
    return [(open(f"{prefix}{e}", "rb").read()) for e in (".bin", ".idx")]


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _stream(prefix):
    ds = IndexedDataset(prefix)
    return ds.span(0, len(ds))


@pytest.mark.parametrize("tok_fixture", ["tiny_tokenizer", "bytelevel_tokenizer"])
def test_document_mode_is_exactly_tok_input_ids_plus_eos(request, tmp_path, corpus_jsonl, tok_fixture):
    tok_dir = request.getfixturevalue(tok_fixture)
    tok = load_tokenizer(tok_dir)
    texts = demo_texts()
    stats = tokenize(
        TokenizeConfig([corpus_jsonl], "text", tok_dir, str(tmp_path / "d"), workers=2, batch_lines=7, progress=False)
    )
    ds = IndexedDataset(tmp_path / "d")
    assert len(ds) == ds.num_documents == len(texts) == stats["documents"] == stats["sequences"]
    assert ds.dtype == np.uint16
    for i, text in enumerate(texts):
        expect = tok(text).input_ids + [tok.eos_token_id]
        assert ds[i].tolist() == expect, f"document {i}"
    assert stats["tokens"] == ds.num_tokens and stats["skipped"]["total"] == 0
    assert json.loads((tmp_path / "d.stats.json").read_text())["documents"] == len(texts)
    fast = "word cache" if tok_fixture == "tiny_tokenizer" else "backend"
    assert stats["encoding"] == ("gigatoken" if gigatoken_available() else fast)


def test_cli_output_is_the_same_for_any_worker_count(tmp_path, corpus_jsonl, tiny_tokenizer):
    outs = []
    for w in (0, 1, 3):
        out = tmp_path / f"w{w}"
        tokenize(TokenizeConfig([corpus_jsonl], "text", tiny_tokenizer, str(out), workers=w, batch_lines=5))
        outs.append(_files(out))
    run_lqs(
        "tokenize",
        "--input",
        corpus_jsonl,
        "--field",
        "text",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "cli",
        "--workers",
        "2",
    )
    outs.append(_files(tmp_path / "cli"))
    run_lqs(
        "tokenize",
        "--input",
        corpus_jsonl,
        "--field",
        "text",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "nocache",
        "--workers",
        "2",
        "--no-word-cache",
        "--no-gigatoken",
    )
    outs.append(_files(tmp_path / "nocache"))
    assert all(o == outs[0] for o in outs[1:])
    stats = json.loads((tmp_path / "cli.stats.json").read_text())
    assert stats["args"]["workers"] == 2 and stats["args"]["mode"] == "document" and stats["tokens_per_s"] > 0
    assert stats["encoding"] == ("gigatoken" if gigatoken_available() else "word cache")
    assert json.loads((tmp_path / "nocache.stats.json").read_text())["encoding"] == "backend"


def test_several_files_globs_and_compression_equal_one_plain_file(tmp_path, corpus_jsonl, tiny_tokenizer):
    rows = [json.loads(line) for line in open(corpus_jsonl)]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", rows[:30])
    (shards / "part-1.jsonl.gz").write_bytes(
        gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows[30:60]))
    )
    zst = zstandard.ZstdCompressor().compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows[60:]))
    (shards / "part-2.jsonl.zst").write_bytes(zst)
    tokenize_files(corpus_jsonl, "text", tiny_tokenizer, tmp_path / "one", workers=0, progress=False)
    tokenize_files(str(shards / "part-*"), "text", tiny_tokenizer, tmp_path / "glob", workers=2, progress=False)
    files = [str(shards / n) for n in ("part-0.jsonl", "part-1.jsonl.gz", "part-2.jsonl.zst")]
    tokenize_files(files, "text", tiny_tokenizer, tmp_path / "list", workers=1, progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "glob") == _files(tmp_path / "list")


def test_max_length_truncates_and_keeps_eos(tmp_path, corpus_jsonl, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    L = 300
    stats = tokenize_files(corpus_jsonl, "text", tiny_tokenizer, tmp_path / "t", max_length=L, workers=0)
    ds = IndexedDataset(tmp_path / "t")
    truncated = dropped = 0
    for i, text in enumerate(demo_texts()):
        full = tok(text).input_ids + [tok.eos_token_id]
        if len(full) > L:
            truncated += 1
            dropped += len(full) - L
            assert ds[i].tolist() == full[: L - 1] + [tok.eos_token_id]
        else:
            assert ds[i].tolist() == full
    assert ds.sequence_lengths.max() == L and truncated > 10
    assert (stats["truncated_documents"], stats["truncated_tokens"]) == (truncated, dropped)


def test_chunk_mode_loses_no_token_respects_the_length_and_cuts_at_sentences(tmp_path, corpus_jsonl, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    L = 257
    tokenize_files(corpus_jsonl, "text", tiny_tokenizer, tmp_path / "doc", workers=0, progress=False)
    stats = tokenize_files(
        corpus_jsonl, "text", tiny_tokenizer, tmp_path / "chunk", mode="chunk", max_length=L, workers=2, progress=False
    )
    chunks = IndexedDataset(tmp_path / "chunk")
    np.testing.assert_array_equal(_stream(tmp_path / "chunk"), _stream(tmp_path / "doc"))  # no token lost or changed
    lengths = chunks.sequence_lengths
    assert lengths.max() <= L and (lengths[:-1] >= math.ceil(L / 2)).all()
    assert chunks.num_documents == len(chunks) == stats["chunking"]["chunks"] == stats["sequences"]
    c = stats["chunking"]
    assert c["sentence_cuts"] + c["hard_cuts"] == len(chunks) - 1 and c["sentence_cuts"] > 0.9 * len(chunks)
    # every sentence cut ends at an EOS, a line break (before or after it) or sentence-final punctuation
    ends = 0
    for i in range(len(chunks) - 1):
        seq = chunks[i]
        tail, head = tok.decode(seq[-4:].tolist()), tok.decode(chunks[i + 1][:2].tolist())
        if seq[-1] == tok.eos_token_id or "\n" in (tail[-1:], head[:1]) or re.search(r"[.!?:;][\"')\]]*\s*$", tail):
            ends += 1
    assert ends >= c["sentence_cuts"]
    # the same bytes with another worker count and batch size
    tokenize(TokenizeConfig([corpus_jsonl], "text", tiny_tokenizer, str(tmp_path / "c0"), "chunk", L, 0, batch_lines=3))
    assert _files(tmp_path / "c0") == _files(tmp_path / "chunk")


def _bad_corpus(path):
    good = b'{"text": "A good document. It has two sentences."}\n'
    lines = [
        good,
        b'{"text": "broken\n',
        b'{"text": "caf\xe9"}\n',
        b'{"body": "no text field"}\n',
        b'{"text": ["not", "a", "string"]}\n',
        b'{"text": ""}\n',
        b"[1, 2]\n",
        good,
    ]
    path.write_bytes(b"".join(lines))
    return str(path)


@pytest.mark.parametrize(
    "line,expected",
    [
        (b'{"text": "broken\n', "invalid JSON at column 10: Unterminated string"),
        (b'{"text": "caf\xe9"}\n', "invalid UTF-8 byte at offset 13"),
        (b'{"body": "x"}\n', "missing field 'text'"),
        (b'{"text": 7}\n', "field 'text' must be a string, got a number"),
        (b'{"text": "   "}\n', "field 'text' is an empty document"),
    ],
)
def test_bad_input_fails_with_file_line_and_leaves_no_output(tmp_path, tiny_tokenizer, line, expected):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "fine."}\n' * 3 + line + b'{"text": "fine."}\n')
    with pytest.raises(InputError) as e:
        tokenize_files(src, "text", tiny_tokenizer, tmp_path / "out", workers=1, progress=False)
    assert str(e.value).startswith(f"{src}:4: {expected}")
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_cli_bad_input_exit_code_and_message(tmp_path, tiny_tokenizer):
    src = _bad_corpus(tmp_path / "bad.jsonl")
    proc = run_lqs(
        "tokenize",
        "--input",
        src,
        "--field",
        "text",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "out",
        "--workers",
        "2",
        check=False,
    )
    assert proc.returncode == 1
    assert f"lqs tokenize: error: {src}:2: invalid JSON" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_on_error_skip_counts_and_reports(tmp_path, tiny_tokenizer):
    src = _bad_corpus(tmp_path / "bad.jsonl")
    proc = run_lqs(
        "tokenize",
        "--input",
        src,
        "--field",
        "text",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "out",
        "--on-error",
        "skip",
        "--workers",
        "2",
    )
    assert "skipped 6 bad lines" in proc.stdout
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert stats["skipped"]["by_reason"] == {
        "empty": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "not_object": 1,
        "not_string": 1,
        "undecodable": 1,
    }
    assert stats["skipped"]["examples"][0].startswith(f"{src}:2: invalid JSON")
    assert stats["documents"] == len(IndexedDataset(tmp_path / "out")) == 2


def test_everything_skipped_or_no_document_is_an_error(tmp_path, tiny_tokenizer):
    src = tmp_path / "all_bad.jsonl"
    src.write_bytes(b'{"x": 1}\n\n{"x": 2}\n')
    with pytest.raises(LQSError, match="every input line was skipped"):
        tokenize_files(src, "text", tiny_tokenizer, tmp_path / "o", on_error="skip", workers=0, progress=False)
    src.write_bytes(b"\n  \n")
    with pytest.raises(LQSError, match="no document"):
        tokenize_files(src, "text", tiny_tokenizer, tmp_path / "o", workers=0, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["all_bad.jsonl"]


def test_tokenizer_without_eos_is_a_clear_error(tmp_path, bytelevel_tokenizer, corpus_jsonl):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(os.path.join(bytelevel_tokenizer, "tokenizer.json"))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(tmp_path / "no_eos"))
    proc = run_lqs(
        "tokenize",
        "--input",
        corpus_jsonl,
        "--field",
        "text",
        "--tokenizer",
        tmp_path / "no_eos",
        "--out",
        tmp_path / "o",
        check=False,
    )
    assert proc.returncode == 1 and "has no EOS token" in proc.stderr
    assert not dataset_exists(tmp_path / "o")


def test_bad_flags(tmp_path, corpus_jsonl, tiny_tokenizer):
    args = ["tokenize", "--input", corpus_jsonl, "--tokenizer", tiny_tokenizer, "--out", tmp_path / "o"]
    proc = run_lqs(*args, "--mode", "chunk", check=False)
    assert proc.returncode == 1 and "--mode chunk needs --max-length" in proc.stderr
    with pytest.raises(LQSError, match="--max-length must be at least 2"):
        TokenizeConfig([corpus_jsonl], "text", tiny_tokenizer, "o", max_length=1)
    with pytest.raises(LQSError, match="--workers must be >= 0"):
        TokenizeConfig([corpus_jsonl], "text", tiny_tokenizer, "o", workers=-1)


def test_killed_run_leaves_no_finished_looking_output(tmp_path, corpus_jsonl, tiny_tokenizer):
    """SIGKILL `lqs tokenize` midway: no PREFIX.bin/.idx pair, no stats; its workers exit too."""
    rows = [json.loads(line) for line in open(corpus_jsonl)]
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        for k in range(25):  # ~12 MB: seconds of work on two cores; killed after the first MB of tokens
            for r in rows:
                f.write(json.dumps({"text": f"[copy {k}] " + r["text"]}) + "\n")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lqs_megatron",
            "tokenize",
            "--input",
            str(big),
            "--field",
            "text",
            "--tokenizer",
            tiny_tokenizer,
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-gigatoken",
        ],  # worker processes (gigatoken encodes in threads of the main process)
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tmp_bin = tmp_path / f"out.tmp-{proc.pid}.bin"
    deadline = time.time() + 60
    while time.time() < deadline and (not tmp_bin.exists() or tmp_bin.stat().st_size < 1 << 20):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    assert tmp_bin.stat().st_size >= 1 << 20, "the run never got going"
    try:  # the encoding workers (checked below: they exit once their parent is gone)
        children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        assert len(children) == 2
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dataset_exists(out)
    assert not (tmp_path / "out.idx").exists() and not (tmp_path / "out.bin").exists()
    assert not (tmp_path / "out.stats.json").exists()
    assert not list(tmp_path.glob("*.idx"))  # a leftover .tmp-PID.bin has no index: it cannot pass as a dataset
    with pytest.raises(LQSError, match="missing"):
        IndexedDataset(out)
    deadline = time.time() + 10  # orphaned workers notice and exit
    while time.time() < deadline and any(map(_alive, children)):
        time.sleep(0.1)
    assert not any(map(_alive, children))
