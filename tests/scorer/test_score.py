"""`lqs score`: ranks, restarts after SIGKILL, bucketing, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer
from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.config import ScoreOptions, ScoreRun
from lqs_megatron.scorer.infer import score_dataset
from lqs_megatron.scorer.model import build_scorer, save_scorer
from tests.conftest import demo_texts
from tests.scorer.helpers import write_token_dataset
from tests.utils import REPO, run_lqs

N = 230
PART = 40  # 6 parts, the last one partial


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("score")
    scorer, cfg, tok = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=96, seed=3)
    (d / "scorer").mkdir()
    save_scorer(scorer, cfg, tok, d / "scorer")
    rng = np.random.default_rng(7)
    lengths = np.clip(rng.lognormal(3.5, 0.8, size=N).astype(int), 1, 150)
    write_token_dataset(d / "corpus", [rng.integers(4, 512, size=n) for n in lengths])
    ref = d / "ref"
    run_lqs("score", "--scorer", d / "scorer", "--data", d / "corpus", "--out", ref, "--part-size", PART)
    return d, np.load(ref / "scores.npy")


def _args(d, out, *extra):
    return ["score", "--scorer", d / "scorer", "--data", d / "corpus", "--out", out, "--part-size", PART, *extra]


def test_one_rank_output(setup):
    d, ref = setup
    assert ref.dtype == np.float32 and ref.shape == (N,) and np.isfinite(ref).all() and ref.std() > 0
    stats = json.loads((d / "ref" / "score_stats.json").read_text())
    assert stats["parts_computed"] == 6 and stats["parts_skipped"] == 0
    names = sorted(p.name for p in (d / "ref" / "parts").iterdir())
    assert names == ["meta.json"] + [f"part-{k:05d}.npy" for k in range(6)]


@pytest.mark.distributed
def test_two_ranks_give_the_same_scores(setup, tmp_path):
    d, ref = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lqs_megatron"]
    proc = subprocess.run(
        [*cmd, *map(str, _args(d, tmp_path / "out"))], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out" / "scores.npy")
    assert np.array_equal(got, ref)  # each part is computed the same way whatever the number of ranks
    assert json.loads((tmp_path / "out" / "score_stats.json").read_text())["world_size"] == 2


def test_scores_are_the_same_whatever_the_bucketing(setup, tmp_path):
    d, ref = setup
    for i, (tokens, rows, part) in enumerate([(500, 3, PART), (100_000, 1000, N)]):
        opts = ScoreOptions(max_tokens=tokens, micro_batch_size=rows, part_size=part)
        got = score_dataset(ScoreRun(d / "scorer", d / "corpus", tmp_path / f"o{i}", progress=False), opts)
        assert got["num_sequences"] == N
        # float32 rounding differs with the batch shape (GEMM blocking), never more than a few ulps
        np.testing.assert_allclose(np.load(tmp_path / f"o{i}" / "scores.npy"), ref, rtol=1e-6, atol=1e-6)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import lqs_megatron.scorer.infer as infer
    from lqs_megatron.utils.atomic import atomic_file

    calls = [0]
    real_save = infer.save_npy

    def save_then_die(path, array):
        calls[0] += 1
        if calls[0] == 3:  # die while writing the third part: its temporary file exists, the part does not
            with atomic_file(path) as tmp:
                np.save(open(tmp, "wb"), array)
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(path, array)

    infer.save_npy = save_then_die
    from lqs_megatron.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_sigkill_then_restart_recomputes_only_missing_parts(setup, tmp_path):
    d, ref = setup
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, *map(str, _args(d, out))], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    parts = out / "parts"
    done = sorted(p.name for p in parts.glob("part-*.npy"))
    assert done == ["part-00000.npy", "part-00001.npy"]
    assert list(parts.glob("part-00002.npy.tmp-*"))  # the write in flight never became a part
    assert not (out / "scores.npy").exists()
    mtimes = {p: os.stat(parts / p).st_mtime_ns for p in done}

    restart = run_lqs(*_args(d, out))
    stats = json.loads(restart.stdout.strip().splitlines()[-1])
    assert stats["parts_skipped"] == 2 and stats["parts_computed"] == 4
    assert "2 already done, 4 to compute" in restart.stderr
    assert {p: os.stat(parts / p).st_mtime_ns for p in done} == mtimes  # finished parts untouched
    assert not list(parts.glob("*.tmp-*"))
    assert np.array_equal(np.load(out / "scores.npy"), ref)

    again = score_dataset(ScoreRun(d / "scorer", d / "corpus", out, progress=False), ScoreOptions(part_size=PART))
    assert again["parts_computed"] == 0 and again["parts_skipped"] == 6  # nothing left to do


def test_restart_with_other_settings_is_refused(setup, tmp_path):
    d, _ = setup
    out = tmp_path / "out"
    score_dataset(ScoreRun(d / "scorer", d / "corpus", out, progress=False), ScoreOptions(part_size=PART))
    proc = run_lqs(
        "score", "--scorer", d / "scorer", "--data", d / "corpus", "--out", out, "--part-size", 50, check=False
    )
    assert proc.returncode == 1 and "part_size differ" in proc.stderr


def test_output_of_before_the_rename_resumes(setup, tmp_path):
    """An OUT written when the restart units were called shards (OUT/shards/shard-XXXXX.npy, shard_size in
    meta.json) resumes under the old flag, which still parses with a deprecation note."""
    d, ref = setup
    out = tmp_path / "out"
    score_dataset(ScoreRun(d / "scorer", d / "corpus", out, progress=False), ScoreOptions(part_size=PART))
    (out / "parts").rename(out / "shards")
    for p in (out / "shards").glob("part-*.npy"):
        p.rename(p.with_name("shard-" + p.name.removeprefix("part-")))
    meta = json.loads((out / "shards" / "meta.json").read_text())
    meta["shard_size"] = meta.pop("part_size")
    recorded = {k: meta.pop(k) for k in ("data_size", "data_digest")}  # not recorded then
    (out / "shards" / "meta.json").write_text(json.dumps(meta))
    for name in ("shards/shard-00003.npy", "scores.npy", "score_stats.json"):
        (out / name).unlink()

    proc = run_lqs("score", "--scorer", d / "scorer", "--data", d / "corpus", "--out", out, "--shard-size", PART)
    assert "--shard-size is deprecated" in proc.stderr and "use --part-size" in proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["parts_skipped"] == 5 and stats["parts_computed"] == 1
    assert not (out / "shards").exists()
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["meta.json"] + [f"part-{k:05d}.npy" for k in range(6)]
    assert np.array_equal(np.load(out / "scores.npy"), ref)
    assert json.loads((out / "parts" / "meta.json").read_text()).items() >= recorded.items()  # recorded now


def test_resume_after_the_bin_was_rewritten_in_place_is_refused(setup, tmp_path):
    d, _ = setup
    for ext in (".bin", ".idx"):
        shutil.copyfile(f"{d / 'corpus'}{ext}", tmp_path / f"corpus{ext}")
    data, out = tmp_path / "corpus", tmp_path / "out"
    opts = ScoreOptions(part_size=PART)
    score_dataset(ScoreRun(d / "scorer", data, out, progress=False), opts)
    (out / "parts" / "part-00005.npy").unlink()  # an interrupted run: the last part is missing
    bin_file = tmp_path / "corpus.bin"
    tokens = np.fromfile(bin_file, dtype=np.uint16)
    rng = np.random.default_rng(11)
    fresh = rng.integers(4, 512, size=tokens.size, dtype=np.uint16)
    with open(bin_file, "r+b") as f:  # same size, same .idx, other tokens
        f.write(fresh.tobytes())
    with pytest.raises(LQSError, match=r"corpus\.bin changed since the parts in .* were scored"):
        score_dataset(ScoreRun(d / "scorer", data, out, progress=False), opts)
    with open(bin_file, "ab") as f:  # the same tokens and more after them: the reader's size check sees it first
        f.write(fresh[:5].tobytes())
    with pytest.raises(LQSError, match=r"corpus\.bin: data file longer than its index"):
        score_dataset(ScoreRun(d / "scorer", data, out, progress=False), opts)


def test_sampled_file_digest_sees_size_and_sampled_blocks(tmp_path, monkeypatch):
    import lqs_megatron.data.preprocess.writing as writing

    monkeypatch.setattr(writing, "_SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(writing, "_SAMPLE_BYTES", 16)
    rng = np.random.default_rng(5)
    blob = rng.integers(0, 256, size=1000, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(blob)
    ref = writing.file_digest(path, sampled=True)
    assert ref != writing.file_digest(path)  # the size and 4 blocks, not the whole file
    # blocks at 0, 328, 656, 984: a byte inside one changes the digest, a byte between them does not
    for pos, seen in ((0, True), (330, True), (999, True), (100, False)):
        changed = bytearray(blob)
        changed[pos] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert (writing.file_digest(path, sampled=True) != ref) == seen, pos
    path.write_bytes(blob + b"x")
    assert writing.file_digest(path, sampled=True) != ref
    path.write_bytes(blob[:60])  # no larger than the blocks: the whole file
    assert writing.file_digest(path, sampled=True) == writing.file_digest(path)


def test_help_and_yaml_name_the_restart_units_parts():
    from lqs_megatron.options import check_mapping

    text = run_lqs("score", "--help").stdout
    assert "--part-size" in text and "OUT/parts/part-XXXXX.npy" in text
    assert "--shard-size" not in text and "OUT/shards" not in text and "shards/shard-" not in text
    assert check_mapping(ScoreOptions, {"shard_size": 7}, "p.yaml") == {"part_size": 7}  # the old YAML key


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok2") / "tok"
    train_tokenizer(demo_texts(), out, vocab_size=600, num_threads=1)
    return str(out)


def test_bad_inputs_exit_1_without_scores(setup, tmp_path, tiny_tokenizer, other_tokenizer):
    d, _ = setup
    write_token_dataset(tmp_path / "empty", [])
    write_token_dataset(tmp_path / "big", [[5, 6, 7], [8, 9], [10, 700, 11]])
    (tmp_path / "tok.stats.json").write_text(json.dumps({"args": {"tokenizer_dir": other_tokenizer}}))
    write_token_dataset(tmp_path / "tok", [[5, 6, 7]])
    # through the CLI: one line on stderr, exit 1, no scores
    cli_cases = [
        (["--data", tmp_path / "empty"], "is empty: nothing to score"),
        (["--data", d / "corpus", "--tokenizer", other_tokenizer], "retokenize the data for the scorer"),
    ]
    for i, (extra, message) in enumerate(cli_cases):
        out = tmp_path / f"cli{i}"
        proc = run_lqs("score", "--scorer", d / "scorer", "--out", out, *extra, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "lqs score: error: " in proc.stderr and message in proc.stderr
        assert not (out / "scores.npy").exists() and not list(out.glob("parts/part-*"))
    # the library raises the same errors (cheaper than a process each)
    lib_cases = [
        (tmp_path / "tok", None, "retokenize the data for the scorer"),  # tokenizer recorded by `lqs tokenize`
        (tmp_path / "big", None, "sequence 2 holds token id 700, outside the scorer's vocabulary of 512"),
        (tmp_path / "big", tmp_path / "nope", "does not exist"),
    ]
    for i, (data, scorer, message) in enumerate(lib_cases):
        out = tmp_path / f"lib{i}"
        with pytest.raises(LQSError, match=message):
            score_dataset(ScoreRun(scorer or d / "scorer", data, out, progress=False))
        assert not (out / "scores.npy").exists() and not list(out.glob("parts/part-*"))
    ok = score_dataset(ScoreRun(d / "scorer", d / "corpus", tmp_path / "ok", tokenizer=tiny_tokenizer, progress=False))
    assert ok["num_sequences"] == N
    # --allow-tokenizer-mismatch: the recorded mismatch becomes a warning
    allowed = score_dataset(
        ScoreRun(d / "scorer", tmp_path / "tok", tmp_path / "allowed", progress=False, allow_tokenizer_mismatch=True)
    )
    assert allowed["num_sequences"] == 1 and np.load(tmp_path / "allowed" / "scores.npy").shape == (1,)


def test_score_run_takes_the_shard_as_text_or_shard():
    from lqs_megatron.data.preprocess.sharding import Shard
    from lqs_megatron.scorer.config import ScoreRun

    assert ScoreRun("s", "d", "o", shard="1/4").shard == Shard(1, 4)
    assert ScoreRun("s", "d", "o", shard=Shard(2, 3)).shard == Shard(2, 3)
    for whole in ("none", "0/1", None):
        assert ScoreRun("s", "d", "o", shard=whole).shard is None
    with pytest.raises(LQSError, match="--shard takes I/N"):
        ScoreRun("s", "d", "o", shard="half")
