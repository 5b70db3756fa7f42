"""`lqs export-jsonl`: decoded text (trailing EOS stripped), index, score; clear errors, no partial file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter
from lqs_megatron.data.preprocess.export import export_jsonl
from tests.conftest import demo_texts
from tests.utils import run_lqs


@pytest.fixture(scope="module")
def texts():
    # real paragraphs (with leading spaces, newlines, quotes and non-ASCII) from Python's own docs
    paras = [p for t in demo_texts()[:6] for p in t.split("\n\n") if p.strip()]
    return paras[:12] + ["naïve café — “quoted” ✓"]


def write_corpus(prefix, tok, texts):
    eos = tok.eos_token_id
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for t in texts:
            w.add_document(tok(t).input_ids + [eos])
        w.add_document([eos])  # an empty document: only its EOS


def test_export_round_trip(tmp_path, tiny_tokenizer, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    write_corpus(tmp_path / "c", tok, texts)
    scores = np.random.default_rng(0).standard_normal(len(texts) + 1).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    run_lqs(
        "export-jsonl",
        "--data",
        tmp_path / "c",
        "--tokenizer",
        tiny_tokenizer,
        "--scores",
        tmp_path / "s.npy",
        "--out",
        tmp_path / "c.jsonl",
        "--batch-size",
        "5",
    )
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(len(texts) + 1))
    # the text is the tokenizer's own decode of the sequence without its EOS ...
    assert [r["text"] for r in rows] == [tok.decode(tok(t).input_ids) for t in texts] + [""]
    # ... which gives back the original text (HF's sentencepiece wrapper drops a *leading* space; not ours)
    assert all(r["text"] == t for r, t in zip(rows, texts) if not t[:1].isspace())
    assert [r["score"] for r in rows] == [float(str(s)) for s in scores]  # shortest float32 decimal
    assert np.array_equal(np.array([r["score"] for r in rows], dtype=np.float32), scores)

    info = export_jsonl(tmp_path / "c", tiny_tokenizer, tmp_path / "n.jsonl")  # in-process: no second start-up
    assert info == {
        "path": str(tmp_path / "n.jsonl"),
        "num_lines": len(texts) + 1,
        "with_scores": False,
        "format": "jsonl",
    }
    rows = [json.loads(x) for x in (tmp_path / "n.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"index", "text"} for r in rows) and rows[3]["text"] == texts[3]

    # the export is what select/order take as jsonl input
    run_lqs("select", "--data", tmp_path / "c.jsonl", "--method", "top-k", "--k", "3", "--out", tmp_path / "t.jsonl")
    top = [json.loads(x)["index"] for x in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    assert top == sorted(np.argsort(-scores.astype(np.float64), kind="stable")[:3].tolist())


@pytest.mark.parametrize("case", ["short", "nan", "no_tokenizer", "no_data"])
def test_export_errors(tmp_path, tiny_tokenizer, texts, case):
    from transformers import AutoTokenizer

    write_corpus(tmp_path / "c", AutoTokenizer.from_pretrained(tiny_tokenizer), texts[:3])
    np.save(tmp_path / "short.npy", np.zeros(2))
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan, 1.0, 2.0]))
    data, tok, scores = tmp_path / "c", tiny_tokenizer, None
    expected = {
        "short": "2 scores for a dataset of 4 sequences",
        "nan": "not finite (first at index 1",
        "no_tokenizer": "does not exist",
        "no_data": "missing",
    }[case]
    if case in ("short", "nan"):
        scores = tmp_path / f"{case}.npy"
    elif case == "no_tokenizer":
        tok = tmp_path / "no_such_tokenizer"
    else:
        data = tmp_path / "absent"
    extra = ["--scores", scores] if scores else []
    proc = run_lqs(
        "export-jsonl", "--data", data, "--tokenizer", tok, *extra, "--out", tmp_path / "o.jsonl", check=False
    )
    assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("o.jsonl")]
