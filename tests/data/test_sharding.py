"""Sharded tokenize: deterministic cuts (byte ranges at line starts, rows, whole compressed files), no empty
shard while there are enough items, and `lqs merge --shards` byte-identical to one run."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.preprocess.shard_merge import merge_shards
from lqs_megatron.data.preprocess.sharding import (
    Shard,
    ShardInputs,
    check_tiling,
    resolve_shard,
    shard_output,
    split_sources,
)
from lqs_megatron.data.preprocess.sources import Columns, iter_segment, sniff
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize
from lqs_megatron.data.preprocess.writing import TIMING_KEYS
from lqs_megatron.errors import LQSError
from tests.data.test_formats import jsonl_bytes, make_rows, write_container


def _items(sources, segments):
    """Every item a list of segments covers: (file, line bytes) / (file, row) / (file, 'whole')."""
    out = []
    for seg in segments:
        src = sources[seg.index]
        batches = list(iter_segment(src, seg, ["text"], 5, 1 << 20))
        if src.compression is not None:
            out.append((seg.index, "whole"))
            continue
        for _, nums, rows in batches:
            if isinstance(rows, Columns):
                out.extend((seg.index, n) for n in nums)
            else:
                out.extend((seg.index, r) for r in rows)
    return out


def _corpus_files(tmp_path, rng) -> list[str]:
    lines = [b'{"text": "%s"}\n' % (b"x" * int(rng.integers(0, 400))) for _ in range(57)]
    lines[10] = b'{"text": "%s"}\n' % (b"y" * 20000)  # one line far longer than a shard's share
    lines[30] = b"\n"
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[:9])))
    pq.write_table(
        pa.Table.from_pylist([{"text": f"r{i}"} for i in range(23)]), tmp_path / "c.parquet", row_group_size=4
    )
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "one"}\n{"text": "two"}')  # no final newline
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "f.jsonl").write_bytes(b'{"text": "tiny"}\n' * 40 + b'{"text": "%s"}\n' % (b"z" * 50000))
    return [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl.gz", "c.parquet", "d.jsonl", "e.jsonl", "f.jsonl")]


def test_cuts_cover_every_item_once_in_order_and_leave_no_shard_empty(tmp_path):
    rng = np.random.default_rng(0)
    files = _corpus_files(tmp_path, rng)
    for chosen in (files, [files[5]], [files[0]], files[1:3]):
        sources = [sniff(f) for f in chosen]
        everything = _items(sources, split_sources(sources, None))
        for n in sorted({1, 2, 3, 5, 8, 13, len(everything) - 1, len(everything), len(everything) + 3} - {0}):
            parts = [_items(sources, split_sources(sources, Shard(i, n))) for i in range(n)]
            assert sum(parts, []) == everything, (len(chosen), n)
            if n <= len(everything):
                assert all(parts), (len(chosen), n, [len(p) for p in parts])
            assert [_items(sources, split_sources(sources, Shard(i, n))) for i in range(n)] == parts  # deterministic
            described = [
                ShardInputs(chosen, sources, split_sources(sources, Shard(i, n)), Shard(i, n)).describe()
                for i in range(n)
            ]
            assert check_tiling(described) is None
    sources = [sniff(f) for f in files]
    described = [
        ShardInputs(files, sources, split_sources(sources, Shard(i, 3)), Shard(i, 3)).describe() for i in range(3)
    ]
    described[1]["segments"][0][1] += 1  # a gap of one byte
    assert check_tiling(described).startswith("shard 1 starts file")


def test_merge_refuses_shards_cut_from_a_changed_input(tmp_path, tiny_tokenizer):
    inputs = _mixed_inputs(tmp_path)
    out = str(tmp_path / "o")
    cfg = dict(on_error="skip", workers=0, progress=False)
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="0/2", **cfg))
    with open(inputs[0], "ab") as f:  # the file grows before the second shard runs
        f.write(jsonl_bytes(make_rows(9, 3)))
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="1/2", **cfg))
    with pytest.raises(LQSError, match="do not tile the input: the shards saw input files of different sizes"):
        merge_shards(out)


def _shard_run(inputs, tok, out, n, **kw):
    for i in range(n):
        tokenize(TokenizeConfig(inputs, "text", tok, str(out), shard=f"{i}/{n}", progress=False, **kw))
    return merge_shards(out)


def _snapshot(prefix, exts):
    return {e: open(f"{prefix}{e}", "rb").read() for e in exts if os.path.exists(f"{prefix}{e}")}


def _no_timing(stats):
    return {k: v for k, v in stats.items() if k not in TIMING_KEYS}


def _one_vs_shards(tmp_path, inputs, tok, n, **kw):
    """Run once, keep the bytes, remove the output; run n shards + merge to the same prefix; compare."""
    out = tmp_path / "out" / "corpus"
    one = tokenize(TokenizeConfig(inputs, "text", tok, str(out), progress=False, **kw))
    exts = (".bin", ".idx", ".meta.jsonl")
    ref = _snapshot(out, exts)
    shutil.rmtree(tmp_path / "out")
    merged = _shard_run(inputs, tok, out, n, **kw)
    assert _snapshot(out, exts) == ref
    assert _no_timing(merged) == _no_timing(one)
    assert _no_timing(json.load(open(f"{out}.stats.json"))) == _no_timing(one)
    return one


def _mixed_inputs(tmp_path):
    rows = make_rows(7, 50)
    data = jsonl_bytes(rows[:20]).split(b"\n")
    data[3] = b'{"text": 5, "source": "bad"}'
    data[11] = b"not json at all"
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(data))
    write_container(tmp_path / "b.jsonl.gz", rows[20:30], "gz")
    write_container(tmp_path / "c.parquet", rows[30:], "parquet", row_group=6)
    return [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl.gz", "c.parquet")]


def test_three_shards_of_several_files_merge_to_one_run(tmp_path, tiny_tokenizer):
    inputs = _mixed_inputs(tmp_path)
    one = _one_vs_shards(
        tmp_path, inputs, tiny_tokenizer, 3, workers=2, batch_lines=4, on_error="skip", keep_fields="source,url"
    )
    assert one["skipped"]["total"] == 2 and ":12: invalid JSON" in one["skipped"]["examples"][1]


def test_one_file_split_by_byte_ranges_merges_to_one_run(tmp_path, tiny_tokenizer):
    rows = make_rows(8, 60)
    data = jsonl_bytes(rows).split(b"\n")
    data[45] = b'{"no_text": 1}'  # its line number must survive the split (shard 2 starts inside the file)
    (tmp_path / "big.jsonl").write_bytes(b"\n".join(data))
    one = _one_vs_shards(
        tmp_path, [str(tmp_path / "big.jsonl")], tiny_tokenizer, 3, workers=0, on_error="skip", keep_fields="url"
    )
    assert one["skipped"]["examples"] == [f"{tmp_path / 'big.jsonl'}:46: missing field 'text' (keys: 'no_text')"]


def test_chunk_mode_shards_merge_to_the_same_chunks(tmp_path, tiny_tokenizer):
    inputs = _mixed_inputs(tmp_path)
    one = _one_vs_shards(
        tmp_path,
        inputs,
        tiny_tokenizer,
        3,
        mode="chunk",
        max_length=129,
        workers=2,
        on_error="skip",
        keep_fields="source",
    )
    assert one["chunking"]["chunks"] > 20


def test_a_finished_shard_is_not_redone_and_a_changed_one_is(tmp_path, tiny_tokenizer):
    inputs = _mixed_inputs(tmp_path)
    out = str(tmp_path / "o")
    cfg = dict(on_error="skip", workers=0, progress=False)
    first = tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="1/3", **cfg))
    path = shard_output(out, Shard(1, 3)) + ".bin"
    mtime = os.stat(path).st_mtime_ns
    again = tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="1/3", **{**cfg, "workers": 2}))
    assert again == first and os.stat(path).st_mtime_ns == mtime
    changed = tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="1/3", keep_fields="url", **cfg))
    assert changed["args"]["keep_fields"] == ["url"] and os.stat(path).st_mtime_ns != mtime
    with pytest.raises(LQSError, match=r"2 of 3 shards of .* are missing or unfinished \(shards 0, 2"):
        merge_shards(out)
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="0/3", **cfg))
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="2/3", **cfg))
    with pytest.raises(LQSError, match="belongs to another run"):
        merge_shards(out)  # shard 1 keeps url, the others do not


def test_more_shards_than_documents_and_the_cli(tmp_path, tiny_tokenizer, capsys):
    (tmp_path / "two.jsonl").write_text('{"text": "first document"}\n{"text": "second one"}\n')
    out = str(tmp_path / "o")
    base = ["tokenize", "--input", str(tmp_path / "two.jsonl"), "--tokenizer", tiny_tokenizer, "--workers", "0"]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    for i in range(3):
        assert main([*base, "--out", out, "--shard", f"{i}/3"]) == 0
    assert main(["merge", "--shards", out]) == 0
    assert _snapshot(out, (".bin", ".idx")) == _snapshot(tmp_path / "ref", (".bin", ".idx"))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents"] == 2


def test_shard_from_flag_and_environment():
    assert resolve_shard("2/5") == Shard(2, 5) and resolve_shard("0/1") is None
    assert resolve_shard(None, env={}) is None
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard(None, env=slurm) == Shard(3, 4)
    assert resolve_shard(
        None, env={**slurm, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    ) == Shard(2, 3)
    torch = {"RANK": "1", "WORLD_SIZE": "2"}
    assert resolve_shard(None, env=torch) == Shard(1, 2)
    assert resolve_shard(None, env={**slurm, **torch}) == Shard(3 * 2 + 1, 8)
    assert resolve_shard(None, torch_ranks=False, env={**slurm, **torch}) == Shard(3, 4)  # score: ranks are DP
    assert resolve_shard(None, torch_ranks=False, env=torch) is None
    assert resolve_shard("none", env=slurm) is None and resolve_shard("2/5", env=slurm) == Shard(2, 5)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(LQSError, match="--shard"):
            resolve_shard(bad)
    with pytest.raises(LQSError, match="Slurm array task 9 is not one of 4"):
        resolve_shard(None, env={**slurm, "SLURM_ARRAY_TASK_ID": "9"})


def test_shard_output_names():
    s = Shard(1, 4)
    assert shard_output("data/corpus", s) == "data/corpus.shard-00001-of-00004"
    assert shard_output("x/out.jsonl", s) == "x/out.shard-00001-of-00004.jsonl"
    assert shard_output("x/scores/", s) == "x/scores.shard-00001-of-00004"
    assert shard_output("x/out.jsonl", None) == "x/out.jsonl"


def test_retokenize_shards_merge_to_one_run(tmp_path, tiny_tokenizer, bytelevel_tokenizer):
    from lqs_megatron.data.preprocess.retokenize import RetokenizeConfig, retokenize

    inputs = _mixed_inputs(tmp_path)
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, str(tmp_path / "src"), on_error="skip", progress=False))
    cfg = dict(data=str(tmp_path / "src"), src_tokenizer=tiny_tokenizer, dst_tokenizer=bytelevel_tokenizer, workers=0)
    one = retokenize(RetokenizeConfig(out_prefix=str(tmp_path / "one"), progress=False, **cfg))
    for i in range(3):
        retokenize(RetokenizeConfig(out_prefix=str(tmp_path / "sh"), progress=False, shard=f"{i}/3", **cfg))
    merged = merge_shards(tmp_path / "sh")
    assert _snapshot(tmp_path / "sh", (".bin", ".idx")) == _snapshot(tmp_path / "one", (".bin", ".idx"))
    for stats in (merged, one):  # written to other prefixes; the rest must agree
        stats.pop("output"), stats.pop("idx_digest"), stats["args"].pop("out_prefix")
    assert _no_timing(merged) == _no_timing(one)


def test_merge_waits_for_shards_still_running(tmp_path, tiny_tokenizer, monkeypatch):
    import lqs_megatron.cli.datasets as cli_datasets

    inputs = _mixed_inputs(tmp_path)
    out = str(tmp_path / "o")
    cfg = dict(on_error="skip", workers=0, progress=False)
    tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="0/2", **cfg))
    naps = []

    def other_node_finishes(seconds):  # the second shard lands while merge waits
        naps.append(seconds)
        tokenize(TokenizeConfig(inputs, "text", tiny_tokenizer, out, shard="1/2", **cfg))

    monkeypatch.setattr(cli_datasets.time, "sleep", other_node_finishes)
    assert main(["merge", "--shards", out, "--wait", "0"]) == 1  # no waiting: the missing shard is an error
    assert naps == []
    assert main(["merge", "--shards", out, "--wait", "600"]) == 0
    assert len(naps) == 1 and json.load(open(f"{out}.stats.json"))["documents"] == 48
