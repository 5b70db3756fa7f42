"""The output rule (issue 24, utils/lock.py ``output_lock``): no output replaces a directory it must not, or
lands on an input; every writer holds the lock on the real path; temporaries of killed runs go; SIGTERM
releases the lock with one line; a full or read-only disk, or ``--out .``, is one line.

Each case runs the real command and checks the exit code, the one error line and that nothing that was
there before is lost (byte for byte)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.utils.lock import lock_path, output_lock
from tests.utils import REPO

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def tree(root) -> dict:
    """Every file under ``root`` (or the file itself) with the digest of its bytes."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if f"lqs {command}: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def work(tiny_tokenizer, tmp_path_factory) -> dict:
    """A raw corpus, its dataset (tokenize), random scores, and a 2-step checkpoint of a tiny model."""
    from tests.conftest import demo_texts

    d = tmp_path_factory.mktemp("rule")
    rng = np.random.default_rng()
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_texts()[:40]))
    data = d / "data"
    assert (
        main(["tokenize", "--input", str(corpus), "--tokenizer", tiny_tokenizer, "--out", str(data), "--workers", "0"])
        == 0
    )
    np.save(d / "scores.npy", rng.standard_normal(40).astype(np.float32))
    ck = d / "ck"
    assert (
        main(
            [
                "pretrain",
                "--model-config",
                "tiny",
                "--tokenizer",
                tiny_tokenizer,
                "--data",
                str(data),
                "--steps",
                "2",
                "--out",
                str(ck),
                "--lr",
                "1e-3",
                "--max-length",
                "32",
                "--global-batch-size",
                "4",
                "--micro-batch-size",
                "2",
                "--no-tensorboard",
                "--save-interval",
                "2",
            ]
        )
        == 0
    )
    return {
        "dir": d,
        "tok": tiny_tokenizer,
        "corpus": str(corpus),
        "data": str(data),
        "ck": ck,
        "scores": str(d / "scores.npy"),
    }


def copy_ck(work, dst: Path) -> Path:
    shutil.copytree(work["ck"], dst)
    return dst


# --- serious 1: never replace a foreign directory, never write on/inside/above an input -----------------------


@pytest.mark.parametrize("where", ["itself", "parent", "inside"])
def test_export_hf_never_writes_on_inside_or_above_its_checkpoint(work, tmp_path, capsys, where):
    ck = copy_ck(work, tmp_path / "run" / "ck")
    (tmp_path / "run" / "notes.txt").write_text("unrelated\n")
    out = {"itself": ck, "parent": tmp_path / "run", "inside": ck / "hf"}[where]
    before = tree(tmp_path / "run")
    assert main(["export-hf", "--checkpoint", str(ck), "--out", str(out)]) == 1
    line = one_error(capsys, "export-hf")
    assert f"--out {out} " in line and "the input" in line and "--checkpoint" in line, line
    assert tree(tmp_path / "run") == before


def test_train_tokenizer_does_not_replace_a_checkpoint(work, tmp_path, capsys):
    ck = copy_ck(work, tmp_path / "ck")
    before = tree(ck)
    assert main(_command("train-tokenizer", work, str(ck))) == 1
    line = one_error(capsys, "train-tokenizer")
    assert "did not write" in line and "step_00000002" in line, line
    assert tree(ck) == before


def test_prepare_scorer_data_does_not_replace_the_directory_of_its_scores(work, tmp_path, capsys):
    ann = tmp_path / "annotate"
    ann.mkdir()
    rng = np.random.default_rng()
    (ann / "annotate.json").write_text(json.dumps({"steps": int(rng.integers(1, 100))}))
    np.save(ann / "raw_scores.npy", rng.standard_normal(40))
    np.save(ann / "scores.npy", rng.standard_normal(40).astype(np.float32))
    before = tree(ann)
    args = ["prepare-scorer-data", "--proxy", work["data"], "--scores", str(ann / "scores.npy"), "--out", str(ann)]
    assert main([*args, "--valid-num", "8"]) == 1
    line = one_error(capsys, "prepare-scorer-data")
    assert "contains the input" in line and "--scores" in line, line
    assert tree(ann) == before


def test_an_earlier_output_is_replaced_a_foreign_directory_is_not(work, tmp_path, capsys):
    hf = tmp_path / "hf"
    args = ["export-hf", "--checkpoint", str(work["ck"]), "--out", str(hf)]
    assert main(args) == 0
    assert json.loads((hf / ".lqs-output.json").read_text())["command"] == "export-hf"
    assert main(args) == 0  # its own earlier output
    (hf / ".lqs-output.json").unlink()  # an export written before the marker existed is recognised by its files
    assert main(args) == 0
    (hf / ".lqs-output.json").unlink()
    (hf / "my-notes.md").write_text("keep me\n")
    before = tree(hf)
    capsys.readouterr()
    assert main(args) == 1
    line = one_error(capsys, "export-hf")
    assert "did not write (it holds my-notes.md)" in line, line
    assert tree(hf) == before
    # another command's output directory is not replaced either
    tok = tmp_path / "tok"
    shutil.copytree(work["tok"], tok)
    (tok / ".lqs-output.json").write_text(json.dumps({"command": "train-tokenizer"}))
    before = tree(tok)
    assert main(["export-hf", "--checkpoint", str(work["ck"]), "--out", str(tok)]) == 1
    assert "is an output of `lqs train-tokenizer`" in one_error(capsys, "export-hf")
    assert tree(tok) == before


def test_a_symlinked_out_directory_is_written_at_its_target(work, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    for _ in range(2):  # the first export, then its replacement
        assert main(["export-hf", "--checkpoint", str(work["ck"]), "--out", str(tmp_path / "alias")]) == 0
        assert (tmp_path / "alias").is_symlink() and (tmp_path / "real" / "model.safetensors").is_file()
        assert sorted(os.listdir(tmp_path)) == ["alias", "real"]


# --- serious 2: an output that is one of the inputs ------------------------------------------------------------


@pytest.mark.parametrize("target", ["bin", "corpus"])
def test_export_jsonl_refuses_to_overwrite_its_dataset_or_raw_corpus(work, capsys, target):
    out = work["data"] + ".bin" if target == "bin" else work["corpus"]
    before = tree(work["dir"])
    args = ["export-jsonl", "--data", work["data"], "--tokenizer", work["tok"], "--out", out, "--format", "jsonl"]
    assert main(args) == 1
    line = one_error(capsys, "export-jsonl")
    assert f"--out {out} is the input" in line and "--data" in line, line
    assert tree(work["dir"]) == before


def test_select_refuses_its_score_file_and_a_symlinked_alias_of_its_data(work, tmp_path, capsys):
    rng = np.random.default_rng()
    scores = tmp_path / "sel.scores.npy"  # what `select --out sel` writes beside sel
    np.save(scores, rng.standard_normal(40).astype(np.float32))
    before = tree(scores)
    base = ["select", "--data", work["data"], "--method", "top-r", "--r", "0.5"]
    assert main([*base, "--scores", str(scores), "--out", str(tmp_path / "sel")]) == 1
    assert "is the input" in one_error(capsys, "select") and tree(scores) == before
    alias = tmp_path / "alias"
    alias.symlink_to(work["dir"])
    before = tree(work["dir"])
    assert main([*base, "--scores", work["scores"], "--out", str(alias / "data")]) == 1
    assert "is the input dataset of --data" in one_error(capsys, "select")
    assert tree(work["dir"]) == before


# --- serious 3: every writer takes the lock, keyed on the real path ----------------------------------------------


def _hold(out: str, ready, release) -> None:
    with output_lock(out, command="the-other-run"):
        ready.set()
        release.wait(60)


def _command(name: str, work, out: str) -> list[str]:
    return {
        "select": ["select", "--data", work["data"], "--scores", work["scores"], "--method", "top-k", "--k", "5"],
        "order": ["order", "--data", work["data"], "--scores", work["scores"], "--method", "shuffle"],
        "export-hf": ["export-hf", "--checkpoint", str(work["ck"])],
        "prepare-scorer-data": [
            "prepare-scorer-data",
            "--proxy",
            work["data"],
            "--scores",
            work["scores"],
            "--valid-num",
            "8",
        ],
        "tokenize": ["tokenize", "--input", work["corpus"], "--tokenizer", work["tok"], "--workers", "0"],
        "train-tokenizer": ["train-tokenizer", "--input", work["corpus"], "--vocab-size", "512"],
        "score": ["score", "--scorer", work.get("scorer", ""), "--data", work["data"], "--device", "cpu"],
    }[name] + ["--out", out]


DIR_OUTPUTS = ("export-hf", "prepare-scorer-data", "train-tokenizer")


@pytest.mark.parametrize("name", ["select", "order", "tokenize", *DIR_OUTPUTS])
def test_a_second_run_on_one_out_is_refused_also_through_a_symlink(work, tmp_path, capsys, name):
    """A live run holds the lock of the real output; this run names it through a symlink (the directory itself
    for a directory output, the parent directory for a dataset prefix)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    real, out = ("real", "alias") if name in DIR_OUTPUTS else ("real/out", "alias/out")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / real), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        before = tree(tmp_path)
        assert main(_command(name, work, str(tmp_path / out))) == 1
        line = one_error(capsys, name)
        assert "is locked by another run" in line and "the-other-run" in line, line
        assert tree(tmp_path) == before and os.path.islink(tmp_path / "alias")  # nothing written or replaced
        if name in DIR_OUTPUTS:
            assert sorted(os.listdir(tmp_path)) == ["alias", "real", "real.lock"]
    finally:
        release.set()
        holder.join(60)


def test_two_concurrent_selects_on_one_out_one_is_refused(work, tmp_path, capsys):
    """The issue's case: two `lqs select` on one --out. The first is paused (SIGSTOP) once it holds the lock,
    the second is refused with one line, the first then finishes with a whole output."""
    from lqs_megatron.data.datasets.indexed import IndexedDataset
    from tests.training.conftest import write_tokens

    rng = np.random.default_rng()
    docs = [rng.integers(0, 512, size=rng.integers(1, 200)) for _ in range(20000)]
    data = write_tokens(tmp_path / "big", docs)
    np.save(tmp_path / "s.npy", rng.standard_normal(len(docs)))
    out = tmp_path / "sel"
    args = ["select", "--data", data, "--scores", str(tmp_path / "s.npy"), "--method", "top-k", "--k", "7000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "lqs_megatron", *args, "--out", str(out)],
        cwd=REPO,
        env=ONE_THREAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, locked = time.monotonic() + 120, False
        while first.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                locked = os.path.getsize(lock_path(out)) > 0  # the holder's record is written
            if locked:
                break
            time.sleep(0.001)
        first.send_signal(signal.SIGSTOP)
        assert locked, "the first select never took the output lock"
        if first.poll() is not None:
            pytest.skip("the first select finished before it could be paused")
        assert main([*args, "--out", str(out)]) == 1
        line = one_error(capsys, "select")
        assert f"{lock_path(out)} is locked by another run (pid {first.pid}" in line, line
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len(IndexedDataset(out)) == 7000 and np.load(f"{out}.indices.npy").shape == (7000,)
    assert not os.path.exists(lock_path(out))


def test_lock_of_another_host_says_which_file_to_delete_and_when(work, tmp_path, capsys):
    out = tmp_path / "sel"
    record = {"pid": 4242, "host": "node-17", "started": "2026-01-01T00:00:00+00:00", "command": "lqs select"}
    Path(lock_path(out)).write_text(json.dumps(record))
    assert main(_command("select", work, str(out))) == 1
    line = one_error(capsys, "select")
    assert "node-17" in line and "cannot tell whether that run still lives" in line, line
    assert (
        f"once it has ended (check pid 4242 on node-17, or its job in the scheduler), delete {lock_path(out)}" in line
    )


# --- weak: temporaries of killed runs ------------------------------------------------------------------------------


def test_the_next_run_removes_temporaries_of_dead_runs_only(work, tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        sel, hf, merged = tmp_path / "sel", tmp_path / "hf", tmp_path / "m"
        stale = [
            Path(f"{sel}.tmp-{dead}.bin"),
            Path(f"{sel}.tmp-{dead}.idx"),
            Path(f"{sel}.scores.npy.tmp-{dead}"),
            Path(f"{sel}.indices.npy.tmp-{dead}"),
            Path(f"{merged}.tmp-{dead}.bin"),
            Path(f"{hf}.tmp-{dead}") / "model.safetensors",
            Path(f"{hf}.old-{dead}") / "config.json",
        ]
        kept = [Path(f"{sel}.tmp-{live.pid}.bin"), Path(f"{hf}.tmp-{live.pid}") / "x", tmp_path / f"other.tmp-{dead}"]
        rng = np.random.default_rng()
        for p in stale + kept:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.bytes(256))
        assert main(_command("select", work, str(sel))) == 0
        assert main(["merge", "--data", work["data"], work["data"], "--out", str(merged)]) == 0
        assert main(["export-hf", "--checkpoint", str(work["ck"]), "--out", str(hf)]) == 0
        assert [p for p in stale if p.parent.exists() and p.exists()] == []
        assert not Path(f"{hf}.tmp-{dead}").exists() and not Path(f"{hf}.old-{dead}").exists()
        assert all(p.exists() for p in kept)
    finally:
        live.kill()
        live.wait()


# --- weak: SIGTERM -------------------------------------------------------------------------------------------------


def test_sigterm_releases_the_lock_and_says_so_in_one_line(work, tmp_path):
    rng = np.random.default_rng()
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 9))) for _ in range(3000)]
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as f:
        for _ in range(20000):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=200))}) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lqs_megatron", *_command("tokenize", {**work, "corpus": str(corpus)}, str(out))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not os.path.exists(lock_path(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, "tokenize finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "lqs tokenize: terminated (SIGTERM)" and "Traceback" not in err, err
    assert not os.path.exists(lock_path(out))
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")], os.listdir(tmp_path)


def test_sigterm_in_pretrain_checkpoints_the_step_and_resume_continues_there(work, tmp_path):
    out = tmp_path / "ck"
    args = [
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        work["tok"],
        "--data",
        work["data"],
        "--out",
        str(out),
        "--lr",
        "1e-3",
        "--max-length",
        "32",
        "--global-batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--no-tensorboard",
        "--log-interval",
        "1",
        "--save-interval",
        "100000",
    ]
    cmd = [sys.executable, "-m", "lqs_megatron", *args, "--steps", "5000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "lqs pretrain: terminated (SIGTERM)" and "Traceback" not in err, err
    assert not os.path.exists(lock_path(out))
    saved = (out / "latest").read_text().strip()  # the step the signal arrived in, checkpointed
    step = int(saved.split("_")[-1])
    assert step >= 3 and (out / saved).is_dir()
    assert main([*args, "--steps", "5000", "--resume", "--stop-after", str(step + 1)]) == 0
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r][-1] == step + 1


# --- weak: full and read-only disks, --out . ----------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def scorer(work) -> str:
    """An untrained tiny scorer on the tokenizer of ``work``'s dataset (its scores do not matter here)."""
    from lqs_megatron.scorer.model import build_scorer, save_scorer

    model, cfg, tok = build_scorer(model_config="tiny", tokenizer=work["tok"], max_length=64, seed=1)
    path = work["dir"] / "scorer"
    path.mkdir()
    save_scorer(model, cfg, tok, path)
    return str(path)


@pytest.mark.parametrize("name", ["select", "export-hf", "prepare-scorer-data", "score"])
def test_a_full_disk_is_one_line(work, tmp_path, capsys, monkeypatch, name, request):
    import safetensors.torch

    if name == "score":
        work = {**work, "scorer": request.getfixturevalue("scorer")}
    monkeypatch.setattr(np, "save", _no_space)
    monkeypatch.setattr(safetensors.torch, "save_file", _no_space)
    out = tmp_path / "out"
    assert main(_command(name, work, str(out))) == 1
    line = one_error(capsys, name)
    assert "no space left on" in line, line
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    if name == "score":  # its restart record may stay (a rerun continues), never a temporary or a score file
        assert not [p for p in left if ".tmp-" in p or p.endswith((".npy", ".lock"))], left
    else:
        assert left == [], left  # no output, no temporary, no lock


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (a user namespace) for a read-only mount")
@pytest.mark.parametrize("name", ["select", "export-hf", "prepare-scorer-data"])
def test_a_read_only_out_is_one_line(work, tmp_path, name):
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here")
    ro = tmp_path / "ro"
    ro.mkdir()
    lqs = " ".join([sys.executable, "-m", "lqs_megatron", *_command(name, work, f"{ro}/out")])
    script = f"mount -t tmpfs -o ro none {ro} && {lqs}"
    proc = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ONE_THREAD,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"lqs {name}: error: cannot create {ro}/out.lock: Read-only file system" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["select", "export-hf", "prepare-scorer-data"])
def test_out_dot_is_one_line(work, tmp_path, capsys, monkeypatch, name):
    (tmp_path / "keep.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert main(_command(name, work, ".")) == 1
    line = one_error(capsys, name)
    assert "--out ." in line and ("current directory" in line or "is a directory" in line), line
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["keep.txt"]
