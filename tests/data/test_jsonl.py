import gzip
import json

import pytest
import zstandard

from lqs_megatron.data.preprocess.jsonl import (
    BadLine,
    SkipLog,
    get_text,
    iter_lines,
    read_jsonl,
    read_texts,
)
from lqs_megatron.data.preprocess.sources import expand_inputs
from lqs_megatron.errors import InputError, LQSError

ROWS = [{"text": f"document {i} \u00e9\u4e2d\U0001f600", "id": i} for i in range(50)]


def _write(path, rows, compress=None):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("compress", [None, "gz", "zst"])
def test_reads_plain_and_compressed(tmp_path, compress):
    name = "a.jsonl" + {None: "", "gz": ".gz", "zst": ".zst"}[compress]
    p = _write(tmp_path / name, ROWS, compress)
    got = list(read_jsonl(p))
    assert [o for _, _, o in got] == ROWS
    assert [n for _, n, _ in got] == list(range(1, len(ROWS) + 1))
    assert all(path == p for path, _, _ in got)


def test_glob_several_files_order_and_line_numbers(tmp_path):
    _write(tmp_path / "s-2.jsonl", ROWS[20:])
    _write(tmp_path / "s-1.jsonl.gz", ROWS[:20], "gz")
    files = expand_inputs([str(tmp_path / "s-*")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["s-1.jsonl.gz", "s-2.jsonl"]
    got = list(read_texts([str(tmp_path / "s-*")], "text"))
    assert [t for _, _, t in got] == [r["text"] for r in ROWS]
    assert got[20][:2] == (str(tmp_path / "s-2.jsonl"), 1)


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(LQSError, match="matches no file"):
        expand_inputs([str(tmp_path / "nothing-*.jsonl")])
    with pytest.raises(LQSError, match="does not exist"):
        expand_inputs(str(tmp_path / "x.jsonl"))
    with pytest.raises(LQSError, match="is a directory"):
        expand_inputs(str(tmp_path))


BAD = [
    (b'{"text": "ok"}\n', None),
    (b"\n", None),  # blank lines are ignored
    (b'{"text": "caf\xe9"}\n', "undecodable"),
    (b'{"text": "unterminated\n', "invalid_json"),
    (b'["text"]\n', "not_object"),
    (b'{"body": "x"}\n', "missing_field"),
    (b'{"text": 3}\n', "not_string"),
    (b'{"text": "  \\n "}\n', "empty"),
    (b'{"text": "last"}', None),  # no final newline
]


def test_every_bad_line_kind_fails_with_file_line(tmp_path):
    for i, (line, kind) in enumerate(BAD):
        if kind is None:
            continue
        p = tmp_path / f"bad{i}.jsonl"
        p.write_bytes(b'{"text": "fine"}\n' + line)
        with pytest.raises(BadLine) as e:
            list(read_texts(str(p), "text"))
        assert e.value.kind == kind
        assert str(e.value).startswith(f"{p}:2: ")
        assert isinstance(e.value, InputError)


def test_skip_counts_every_kind(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b"".join(line for line, _ in BAD))
    log = SkipLog()
    got = list(read_texts(str(p), "text", on_error="skip", skipped=log))
    assert [(n, t) for _, n, t in got] == [(1, "ok"), (9, "last")]
    assert log.counts == {k: 1 for _, k in BAD if k}
    assert log.total == 6 and len(log.examples) == 6
    assert log.examples[0].startswith(f"{p}:3: invalid UTF-8")


def test_utf8_bom_and_crlf(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [t for _, _, t in read_texts(str(p), "text")] == ["a", "b"]


def test_truncated_compressed_file_is_an_input_error(tmp_path):
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 20))
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read the gzip stream after line"):
        list(iter_lines(str(p)))


def test_get_text_messages():
    with pytest.raises(BadLine, match=r"f.jsonl:7: missing field 'text' \(keys: 'a'\)"):
        get_text({"a": 1}, "text", "f.jsonl", 7)
    with pytest.raises(BadLine, match="must be a string, got a list"):
        get_text({"text": ["x"]}, "text", "f.jsonl", 7)
