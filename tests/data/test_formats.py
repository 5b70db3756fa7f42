"""Input containers: the same records as jsonl (plain/gz/zst/xz/bz2), parquet, arrow file/stream and a
datasets.save_to_disk directory give byte-identical datasets; formats are recognised by content."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
import zstandard

from lqs_megatron.cli import main
from lqs_megatron.data.preprocess.jsonl import SkipLog, read_texts
from lqs_megatron.data.preprocess.sources import expand_inputs, sniff
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize
from lqs_megatron.errors import InputError, LQSError
from tests.conftest import demo_texts


def make_rows(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    texts = demo_texts()
    rows = []
    for k, i in enumerate(rng.choice(len(texts), n, replace=False).tolist()):
        rows.append(
            {
                "text": texts[i][: int(rng.integers(200, 3000))],
                "source": f"s{rng.integers(0, 3)}",
                "url": f"https://x.org/{k}",
                "n": int(rng.integers(0, 1 << 40)),
            }
        )
    return rows


def jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def write_container(path, rows, kind: str, row_group: int = 7) -> str:
    """Write ``rows`` to ``path`` as ``kind``; returns the path given to --input."""
    path = str(path)
    data = jsonl_bytes(rows)
    if kind == "jsonl":
        open(path, "wb").write(data)
    elif kind == "gz":
        open(path, "wb").write(gzip.compress(data))
    elif kind == "zst":  # several frames, as pzstd / streaming writers produce
        c = zstandard.ZstdCompressor()
        half = data.index(b"\n", len(data) // 2) + 1
        open(path, "wb").write(c.compress(data[:half]) + c.compress(data[half:]))
    elif kind == "xz":
        open(path, "wb").write(lzma.compress(data))
    elif kind == "bz2":
        open(path, "wb").write(bz2.compress(data))
    else:
        table = pa.Table.from_pylist(rows)
        if kind == "parquet":
            pq.write_table(table, path, row_group_size=row_group)
        elif kind in ("arrow", "stream"):
            writer = pa.ipc.new_file if kind == "arrow" else pa.ipc.new_stream
            with pa.OSFile(path, "wb") as sink, writer(sink, table.schema) as w:
                for b in table.to_batches(max_chunksize=row_group):
                    w.write_batch(b)
        elif kind == "save_to_disk":
            save_to_disk(path, table, shards=2)
        else:
            raise ValueError(kind)
    return path


def save_to_disk(path: str, table, shards: int) -> None:
    """The layout ``datasets.Dataset.save_to_disk`` writes: arrow streams, state.json, dataset_info.json."""
    import os

    os.makedirs(path)
    names, n = [], table.num_rows
    for i in range(shards):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        part = table.slice(i * n // shards, (i + 1) * n // shards - i * n // shards)
        with pa.OSFile(os.path.join(path, name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(part, max_chunksize=5)
        names.append({"filename": name})
    json.dump({"_data_files": names, "_fingerprint": "x", "_split": None}, open(os.path.join(path, "state.json"), "w"))
    json.dump({"features": {}}, open(os.path.join(path, "dataset_info.json"), "w"))


def _run(inputs, tok, out, **kw):
    kw.setdefault("workers", 0)
    return tokenize(TokenizeConfig(inputs, "text", tok, str(out), progress=False, **kw))


def _bytes(prefix, exts=(".bin", ".idx", ".meta.jsonl")):
    return [open(f"{prefix}{e}", "rb").read() for e in exts]


KINDS = ["gz", "zst", "xz", "bz2", "parquet", "arrow", "stream", "save_to_disk"]


def test_every_container_gives_the_same_bytes(tmp_path, tiny_tokenizer):
    rows = make_rows(0, 40)
    base = write_container(tmp_path / "c.jsonl", rows, "jsonl")
    _run([base], tiny_tokenizer, tmp_path / "ref", keep_fields="source,url,n")
    ref = _bytes(tmp_path / "ref")
    for kind in KINDS:
        src = write_container(tmp_path / f"c-{kind}.data", rows, kind)  # extensions say nothing
        stats = _run([src], tiny_tokenizer, tmp_path / kind, keep_fields="source,url,n", workers=2, batch_lines=6)
        assert _bytes(tmp_path / kind) == ref, kind
        assert stats["documents"] == 40


def test_directories_and_globs_mix_containers_in_sorted_order(tmp_path, tiny_tokenizer):
    rows = make_rows(1, 36)
    d = tmp_path / "corpus"
    d.mkdir()
    write_container(d / "a.parquet", rows[:10], "parquet", row_group=3)
    write_container(d / "b.jsonl.gz", rows[10:20], "gz")
    write_container(d / "c", rows[20:30], "save_to_disk")
    write_container(d / "d.arrow", rows[30:], "arrow")
    (d / ".hidden.jsonl").write_text("not json\n")
    (d / "_SUCCESS").write_text("")
    whole = write_container(tmp_path / "all.jsonl", rows, "jsonl")
    _run([whole], tiny_tokenizer, tmp_path / "ref")
    _run([str(d)], tiny_tokenizer, tmp_path / "dir")
    _run([str(d / "[ab]*"), str(d / "c"), str(d / "d.*")], tiny_tokenizer, tmp_path / "glob")
    exts = (".bin", ".idx")
    assert _bytes(tmp_path / "dir", exts) == _bytes(tmp_path / "ref", exts) == _bytes(tmp_path / "glob", exts)
    assert [p.rsplit("/", 1)[1] for p in expand_inputs([str(d)])] == [
        "a.parquet",
        "b.jsonl.gz",
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
        "d.arrow",
    ]


def test_real_datasets_save_to_disk(tmp_path, tiny_tokenizer):
    datasets = pytest.importorskip("datasets")
    rows = make_rows(2, 25)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    write_container(tmp_path / "ref.jsonl", rows, "jsonl")
    _run([str(tmp_path / "ref.jsonl")], tiny_tokenizer, tmp_path / "ref")
    _run([str(tmp_path / "ds")], tiny_tokenizer, tmp_path / "ds-out")
    assert _bytes(tmp_path / "ds-out", (".bin", ".idx")) == _bytes(tmp_path / "ref", (".bin", ".idx"))


@pytest.mark.parametrize(
    "content,where",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "starts with bytes 89 50 4e 47"),
        (b"PK\x03\x04\x14\x00\x00\x00", "starts with bytes 50 4b 03 04"),
        (
            gzip.compress(b"PAR1 not text", mtime=0),
            "gzip-compressed; the decompressed data starts with bytes 50 41 52 31",
        ),
        (b"text,source\nhello,x\n", "starts with bytes 74 65 78 74 2c"),
    ],
    ids=["png", "zip", "gzip-parquet", "csv"],  # the same names in every process (pytest -n collects in each)
)
def test_unsupported_or_mislabelled_files_are_named(tmp_path, tiny_tokenizer, content, where, capsys):
    bad = tmp_path / "data.jsonl"
    bad.write_bytes(content)
    rc = main(["tokenize", "--input", str(bad), "--tokenizer", tiny_tokenizer, "--out", str(tmp_path / "o")])
    assert rc == 1
    assert f"lqs tokenize: error: {bad}: not jsonl, parquet or arrow ({where}" in capsys.readouterr().err
    assert not (tmp_path / "o.idx").exists()


def test_mislabelled_but_supported_files_are_read_by_content(tmp_path, tiny_tokenizer):
    rows = make_rows(3, 12)
    write_container(tmp_path / "ref.jsonl", rows, "jsonl")
    _run([str(tmp_path / "ref.jsonl")], tiny_tokenizer, tmp_path / "ref")
    for kind, name in (("parquet", "x.jsonl"), ("gz", "y.zst"), ("jsonl", "z.parquet")):
        path = write_container(tmp_path / name, rows, kind)
        _run([path], tiny_tokenizer, tmp_path / f"o-{kind}")
        assert _bytes(tmp_path / f"o-{kind}", (".bin",)) == _bytes(tmp_path / "ref", (".bin",)), name


def test_parquet_field_errors_name_the_file_and_row(tmp_path, tiny_tokenizer):
    rows = make_rows(4, 10)
    rows[6]["text"] = None
    path = write_container(tmp_path / "p.parquet", rows, "parquet", row_group=4)
    with pytest.raises(InputError, match=r"p\.parquet:7: field 'text' must be a string, got null"):
        _run([path], tiny_tokenizer, tmp_path / "o")
    stats = _run([path], tiny_tokenizer, tmp_path / "o", on_error="skip")
    assert stats["documents"] == 9 and stats["skipped"]["by_reason"] == {"not_string": 1}
    with pytest.raises(
        InputError, match=r"p\.parquet:1: missing field 'body' \(columns: 'text', 'source', 'url', 'n'\)"
    ):
        tokenize(TokenizeConfig([path], "body", tiny_tokenizer, str(tmp_path / "o"), workers=0, progress=False))


def test_train_tokenizer_and_target_read_parquet(tmp_path, tiny_tokenizer):
    rows = make_rows(5, 30)
    pq_path = write_container(tmp_path / "t.parquet", rows, "parquet")
    js_path = write_container(tmp_path / "t.jsonl", rows, "jsonl")
    log = SkipLog()
    assert [t for _, _, t in read_texts(pq_path, "text", "skip", log)] == [r["text"] for r in rows]
    for src, out in ((pq_path, "tp"), (js_path, "tj")):
        assert main(["train-tokenizer", "--input", src, "--vocab-size", "500", "--out", str(tmp_path / out)]) == 0
    assert (tmp_path / "tp/tokenizer.json").read_bytes() == (tmp_path / "tj/tokenizer.json").read_bytes()
    convs = [
        {"conversations": [{"from": "human", "value": r["text"][:80]}, {"from": "gpt", "value": r["source"]}]}
        for r in rows[:9]
    ]
    pq.write_table(pa.Table.from_pylist(convs), tmp_path / "c.parquet", row_group_size=4)
    (tmp_path / "c.jsonl").write_bytes(jsonl_bytes(convs))
    for src, out in (("c.parquet", "cp"), ("c.jsonl", "cj")):
        args = ["--input", str(tmp_path / src), "--tokenizer", tiny_tokenizer, "--out", str(tmp_path / out)]
        assert main(["tokenize-target", *args, "--workers", "0"]) == 0
    assert _bytes(tmp_path / "cp", (".bin", ".idx")) == _bytes(tmp_path / "cj", (".bin", ".idx"))


def test_dataset_dict_directory_asks_for_a_split(tmp_path):
    d = tmp_path / "dd"
    for split in ("train", "test"):
        save_to_disk(str(d / split), pa.Table.from_pylist(make_rows(6, 4)), shards=1)
    json.dump({"splits": ["train", "test"]}, open(d / "dataset_dict.json", "w"))
    with pytest.raises(LQSError, match=r"is a datasets DatasetDict \(splits: test, train\); give one split"):
        expand_inputs([str(d)])
    assert sniff(expand_inputs([str(d / "train")])[0]).kind == "arrow_stream"
    shutil.rmtree(d)
