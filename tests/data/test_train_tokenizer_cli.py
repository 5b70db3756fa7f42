"""`lqs train-tokenizer`: jsonl in (several files, compressed), a lossless AutoTokenizer dir out."""

import gzip
import json
import os

from tests.conftest import demo_texts
from tests.data.conftest import write_jsonl
from tests.utils import run_lqs


def test_trains_a_lossless_tokenizer_from_jsonl_files(tmp_path):
    from transformers import AutoTokenizer

    texts = demo_texts()
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:40]])
    (tmp_path / "b.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts[40:]).encode())
    )
    proc = run_lqs(
        "train-tokenizer",
        "--input",
        a,
        tmp_path / "b.jsonl.gz",
        "--field",
        "text",
        "--vocab-size",
        600,
        "--out",
        tmp_path / "tok",
    )
    assert "wrote tokenizer" in proc.stdout
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(tok) == 600 and tok.eos_token_id == 3
    for t in texts[::10]:
        ids = tok(t).input_ids
        assert tok.eos_token_id not in ids and tok.decode(ids) == t


def test_bad_line_fails_with_file_line_and_leaves_no_directory(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in demo_texts()[:20]] + [{"text": None}])
    proc = run_lqs(
        "train-tokenizer",
        "--input",
        src,
        "--field",
        "text",
        "--vocab-size",
        400,
        "--out",
        tmp_path / "tok",
        check=False,
    )
    assert proc.returncode == 1
    assert f"lqs train-tokenizer: error: {src}:21: field 'text' must be a string, got null" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]
