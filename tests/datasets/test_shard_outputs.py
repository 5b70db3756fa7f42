"""Sharded `score` and `export-jsonl` (jsonl and parquet): 3 shards + `lqs merge --shards` are byte-identical
to one run; `select` reads scores from a score directory, a parquet file or unmerged score shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.meta import write_meta
from lqs_megatron.data.datasets.scores import read_scores
from lqs_megatron.data.preprocess.export import export_jsonl
from lqs_megatron.data.preprocess.shard_merge import merge_shards
from lqs_megatron.data.preprocess.sharding import Shard
from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.config import ScoreOptions, ScoreRun
from lqs_megatron.scorer.infer import score_dataset
from lqs_megatron.scorer.model import build_scorer, save_scorer
from tests.datasets.test_export import write_corpus
from tests.scorer.helpers import write_token_dataset

N = 53


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_tokenizer):
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("sharded-score")
    scorer, cfg, tok = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=64, seed=1)
    (d / "scorer").mkdir()
    save_scorer(scorer, cfg, tok, d / "scorer")
    rng = np.random.default_rng(3)
    write_token_dataset(d / "corpus", [rng.integers(4, 512, size=int(n)) for n in rng.integers(1, 60, size=N)])
    write_meta(d / "corpus", [{"url": f"u{i}", "lang": ["en", "fr"][i % 2]} for i in range(N)])
    opts = ScoreOptions(part_size=7, parquet=True)
    score_dataset(ScoreRun(d / "scorer", d / "corpus", d / "one", progress=False), opts)
    for i in range(3):
        score_dataset(ScoreRun(d / "scorer", d / "corpus", d / "sh", progress=False, shard=Shard(i, 3)), opts)
    return d


def test_score_shards_merge_to_one_run(scored):
    d = scored
    unmerged = read_scores(d / "sh")  # select's score reading: the shards, in order, before any merge
    summary = merge_shards(d / "sh")
    for name in ("scores.npy", "scores.parquet"):
        assert (d / "sh" / name).read_bytes() == (d / "one" / name).read_bytes(), name
    one = json.loads((d / "one" / "score_stats.json").read_text())
    assert {k: summary[k] for k in ("num_sequences", "mean", "std", "min", "max")} == {
        k: one[k] for k in ("num_sequences", "mean", "std", "min", "max")
    }
    ref = np.load(d / "one" / "scores.npy")
    assert np.array_equal(unmerged, ref) and np.array_equal(read_scores(d / "one"), ref)
    table = pq.read_table(d / "one" / "scores.parquet")
    assert table.column_names == ["index", "document", "score", "url", "lang"]
    assert np.array_equal(read_scores(d / "one" / "scores.parquet"), ref)
    assert table.column("url").to_pylist()[5] == "u5" and table.column("document").to_pylist() == list(range(N))


def test_score_shard_from_slurm_array_and_missing_shards(scored, monkeypatch, tmp_path):
    d = scored
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    args = ["score", "--scorer", str(d / "scorer"), "--data", str(d / "corpus"), "--out", str(tmp_path / "s")]
    assert main([*args, "--no-progress", "--device", "cpu", "--part-size", "7"]) == 0
    part = np.load(tmp_path / "s.shard-00001-of-00004" / "scores.npy")
    assert np.array_equal(part, np.load(d / "one" / "scores.npy")[14:28])  # 8 units of 7: shard 1 of 4 holds 2
    with pytest.raises(LQSError, match=r"3 of 4 shards .* missing or unfinished \(shards 0, 2, 3"):
        merge_shards(tmp_path / "s")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_shards_merge_to_one_run(tmp_path, tiny_tokenizer, fmt, monkeypatch):
    from transformers import AutoTokenizer

    from lqs_megatron.data.preprocess import export

    monkeypatch.setattr(export, "ROW_GROUP", 4)  # several row groups, cut across the shards
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    texts = [f"document {i}: " + "word " * int(i % 7) for i in range(23)]
    write_corpus(tmp_path / "c", tok, texts)
    scores = np.random.default_rng(0).standard_normal(24).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    out = str(tmp_path / f"e.{fmt}")
    export_jsonl(tmp_path / "c", tiny_tokenizer, out, tmp_path / "s.npy", batch_size=5)
    ref = open(out, "rb").read()
    os.unlink(out)
    for i in range(3):
        info = export_jsonl(tmp_path / "c", tiny_tokenizer, out, tmp_path / "s.npy", 3, shard=Shard(i, 3))
        assert info["path"].endswith(f".shard-0000{i}-of-00003.{fmt}") and info["num_lines"] == 8
    assert main(["merge", "--shards", out]) == 0
    assert open(out, "rb").read() == ref
    if fmt == "parquet":
        t = pq.read_table(out)
        assert t.column("index").to_pylist() == list(range(24)) and pq.ParquetFile(out).metadata.num_row_groups == 6
        assert np.array_equal(read_scores(out), scores)
