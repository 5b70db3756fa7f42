"""Data faults (issue 14): truncated containers, the wrong tokenizer for an export, a lying .idx header, a
read-only --out, an empty tokenizer directory, leftovers of a killed tokenize, two runs on one --out.

Each case: the exit code, a message naming the file, and no finished-looking output that is wrong or lost
(an older good output at the same --out survives byte for byte)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter
from lqs_megatron.utils.lock import lock_path, output_lock
from tests.data.conftest import bytelevel_tokenizer  # noqa: F401 - the fixture
from tests.data.test_formats import jsonl_bytes, make_rows, write_container
from tests.utils import REPO

ROWS = make_rows(21, 60)


def _outputs(prefix) -> dict:
    return {
        e: open(f"{prefix}{e}", "rb").read() for e in (".bin", ".idx", ".stats.json") if os.path.exists(f"{prefix}{e}")
    }


def _tokenize(src, tok, out, *extra):
    return main(["tokenize", "--input", str(src), "--tokenizer", tok, "--out", str(out), "--workers", "0", *extra])


def _cut(path, kind: str) -> None:
    data = open(path, "rb").read()
    if kind == "zst":  # two frames, cut in the middle of the second
        half = jsonl_bytes(ROWS).index(b"\n", len(jsonl_bytes(ROWS)) // 2) + 1
        import zstandard

        first = len(zstandard.ZstdCompressor().compress(jsonl_bytes(ROWS)[:half]))
        data = data[: first + (len(data) - first) // 2]
    else:
        data = data[: int(len(data) * 0.6)]
    open(path, "wb").write(data)


@pytest.mark.parametrize("kind", ["zst", "gz", "xz", "bz2", "parquet", "arrow", "stream"])
def test_truncated_container_fails_in_both_modes_naming_file_and_position(tmp_path, tiny_tokenizer, kind, capsys):
    out = tmp_path / "out"
    good = write_container(tmp_path / "good.jsonl", ROWS[:5], "jsonl")
    assert _tokenize(good, tiny_tokenizer, out) == 0
    before = _outputs(out)
    src = write_container(tmp_path / f"corpus.{kind}", ROWS, kind, row_group=10)
    _cut(src, kind)
    capsys.readouterr()
    for mode in ("fail", "skip"):
        assert _tokenize(src, tiny_tokenizer, out, "--on-error", mode) == 1, mode
        err = capsys.readouterr().err
        assert f"lqs tokenize: error: {src}" in err and "Traceback" not in err, err
        position = ":" in err.split(src, 1)[1][:12] or "byte" in err  # FILE:LINE, or the byte offset
        assert position and ("truncated" in err or "cut short" in err or "end-of-stream" in err), err
    assert _outputs(out) == before  # the finished output of the earlier run is untouched
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_zstd_truncated_mid_frame_message(tmp_path, tiny_tokenizer, capsys):
    src = write_container(tmp_path / "c.jsonl.zst", ROWS, "zst")
    _cut(src, "zst")
    assert _tokenize(src, tiny_tokenizer, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "the zstd frame starting at byte" in err and "is incomplete" in err and f"{src}:" in err


def _tokens(prefix, docs, dtype=np.uint16):
    with IndexedDatasetWriter(str(prefix), dtype) as w:
        for d in docs:
            w.add_document(np.asarray(d))


def test_export_refuses_a_tokenizer_that_does_not_fit(tmp_path, tiny_tokenizer, bytelevel_tokenizer, capsys):  # noqa: F811
    src = write_container(tmp_path / "c.jsonl", ROWS[:10], "jsonl")
    assert main(["tokenize", "--input", src, "--tokenizer", bytelevel_tokenizer, "--out", str(tmp_path / "d")]) == 0
    out = tmp_path / "d.jsonl"
    capsys.readouterr()
    # 1. the dataset's stats record its tokenizer: another fingerprint is refused
    assert main(["export-jsonl", "--data", str(tmp_path / "d"), "--tokenizer", tiny_tokenizer, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'd'} was tokenized with {bytelevel_tokenizer}" in err and "fingerprint" in err
    # 2. no stats: ids beyond the tokenizer's 512 are refused (the 300-id tokenizer, ids up to 392)
    os.unlink(tmp_path / "d.stats.json")
    assert main(["export-jsonl", "--data", str(tmp_path / "d"), "--tokenizer", tiny_tokenizer, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'd'}.bin holds token id" in err and "has 512 ids" in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith("d.jsonl")]
    assert (
        main(["export-jsonl", "--data", str(tmp_path / "d"), "--tokenizer", bytelevel_tokenizer, "--out", str(out)])
        == 0
    )


LIES = [
    (1, "says dtype uint8 (1 bytes per token), but the sequence pointers step by 2 bytes per token (a uint16 dataset)"),
    (4, "says dtype int32 (4 bytes per token), but the sequence pointers step by 2 bytes"),
    (9, "unknown dtype code 9 in the header"),
]


@pytest.mark.parametrize("code,expected", LIES)
def test_idx_dtype_code_that_lies_is_a_clear_error(tmp_path, capsys, code, expected):
    rng = np.random.default_rng(code)
    _tokens(tmp_path / "d", [rng.integers(300, 60000, rng.integers(2, 30)) for _ in range(40)])
    raw = bytearray((tmp_path / "d.idx").read_bytes())
    raw[17] = code
    (tmp_path / "d.idx").write_bytes(bytes(raw))
    assert main(["merge", "--data", str(tmp_path / "d"), str(tmp_path / "d"), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert f"lqs merge: error: {tmp_path / 'd'}.idx: " in err and expected in err, err
    assert "truncated data file" not in err and not (tmp_path / "m.idx").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (a user namespace) for a read-only mount")
def test_read_only_out_reports_the_real_error(tmp_path, tiny_tokenizer):
    ro = tmp_path / "ro"
    ro.mkdir()
    src = write_container(tmp_path / "c.jsonl", ROWS[:3], "jsonl")
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    lqs = f"{sys.executable} -m lqs_megatron tokenize --input {src} --tokenizer {tiny_tokenizer} --workers 0"
    script = f"mount -t tmpfs -o ro none {ro} && {lqs} --out {ro}/sub/out"
    proc = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"lqs tokenize: error: cannot create {ro}/sub/out.lock: Read-only file system" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_empty_tokenizer_directory_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    src = write_container(tmp_path / "c.jsonl", ROWS[:3], "jsonl")
    assert _tokenize(src, str(tmp_path / "tok"), tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert f"tokenizer directory '{tmp_path / 'tok'}' holds no tokenizer files (expected tokenizer.json" in err
    assert "found: nothing" in err and "sentencepiece" not in err and not (tmp_path / "o.idx").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_tokenize_are_cleaned_only_when_their_pid_is_dead(tmp_path, tiny_tokenizer):
    src = write_container(tmp_path / "c.jsonl", ROWS[:8], "jsonl")
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f"out.tmp-{dead}.bin", tmp_path / f"out.meta.jsonl.tmp-{dead}"]
        kept = [
            tmp_path / f"out.tmp-{live.pid}.bin",
            tmp_path / f"other.tmp-{dead}.bin",
            tmp_path / f"out.shard-00000-of-00002.tmp-{dead}.bin",
        ]
        for p in stale + kept:
            p.write_bytes(b"\x00" * 64)
        assert _tokenize(src, tiny_tokenizer, tmp_path / "out") == 0
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
        assert json.loads((tmp_path / "out.stats.json").read_text())["documents"] == 8
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_two_tokenize_runs_on_one_out_exactly_one_proceeds(tmp_path, tiny_tokenizer, capsys):
    big = tmp_path / "big.jsonl.gz"
    big.write_bytes(gzip.compress(jsonl_bytes(ROWS * 30)))
    out = tmp_path / "out"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lqs_megatron",
            "tokenize",
            "--input",
            str(big),
            "--tokenizer",
            tiny_tokenizer,
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not os.path.exists(lock_path(out)) and time.time() < deadline:
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.05)
    assert _tokenize(big, tiny_tokenizer, out) == 1
    err = capsys.readouterr().err
    assert f"{out}.lock is locked by another run (pid {first.pid}" in err and "tokenize" in err
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((tmp_path / "out.stats.json").read_text())["documents"] == len(ROWS) * 30
    assert not os.path.exists(lock_path(out))


@pytest.mark.parametrize("cmd", ["export-jsonl", "merge", "retokenize", "sample-proxy", "train-tokenizer"])
def test_other_writers_take_the_lock(tmp_path, tiny_tokenizer, cmd, capsys):
    _tokens(tmp_path / "d", [[5, 6, 3], [7, 3]])
    out = str(tmp_path / ("o.jsonl" if cmd == "export-jsonl" else "o"))
    args = {
        "export-jsonl": ["--data", str(tmp_path / "d"), "--tokenizer", tiny_tokenizer, "--out", out],
        "merge": ["--data", str(tmp_path / "d"), "--out", out],
        "retokenize": [
            "--data",
            str(tmp_path / "d"),
            "--src-tokenizer",
            tiny_tokenizer,
            "--dst-tokenizer",
            tiny_tokenizer,
            "--out",
            out,
            "--workers",
            "0",
        ],
        "sample-proxy": ["--data", str(tmp_path / "d"), "--num", "1", "--out", out],
        "train-tokenizer": [
            "--input",
            write_container(tmp_path / "c.jsonl", ROWS[:5], "jsonl"),
            "--vocab-size",
            "300",
            "--out",
            out,
        ],
    }[cmd]
    with output_lock(out, command="the holder"):
        assert main([cmd, *args]) == 1
    err = capsys.readouterr().err
    assert f"error: {out}.lock is locked by another run (pid {os.getpid()}" in err and "command: the holder" in err
    assert not os.path.exists(out) and not os.path.exists(out + ".idx")
