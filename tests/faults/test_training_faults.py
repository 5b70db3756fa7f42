"""Faults of the training machinery (issue 14): NaN training, two runs on one --out, corrupt checkpoints,
full disks, rotation, the train-scorer command form on a small split.

Each test runs the real command, asserts its exit code and that its message names the step or the
file, and checks that no finished-looking output is wrong or lost (``latest``, the step directories,
``metrics.jsonl``, the scorer's ``best``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import write_tokens
from tests.utils import REPO, run_lqs

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ARGS = ["--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1"]
ARGS += ["--seed", "5", "--no-tensorboard"]

pytestmark = pytest.mark.slow


def lqs(*args, **kw):
    return run_lqs(*args, check=False, env=ONE_THREAD, **kw)


@pytest.fixture(scope="module")
def data(tiny_tokenizer, tmp_path_factory) -> dict:
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from tests.conftest import demo_texts

    tok = load_tokenizer(tiny_tokenizer)
    docs = [tok(t).input_ids + [tok.eos_token_id] for t in demo_texts()[:80]]
    d = tmp_path_factory.mktemp("faults")
    return {"tokenizer": tiny_tokenizer, "train": write_tokens(d / "train", docs[:60]), "dir": d}


def pretrain_args(data, out, *extra, steps=6, lr="3e-3"):
    return [
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        data["tokenizer"],
        "--data",
        data["train"],
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--lr",
        lr,
        *ARGS,
        *extra,
    ]


def records(out) -> list[dict]:
    return [json.loads(x) for x in open(Path(out) / "metrics.jsonl")]


def latest(out) -> str | None:
    p = Path(out) / "latest"
    return p.read_text().strip() if p.is_file() else None


def error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def good_run(data, tmp_path_factory) -> Path:
    """6 steps, checkpoints at 3 and 6 (with checksums)."""
    out = tmp_path_factory.mktemp("good") / "ckpt"
    proc = lqs(*pretrain_args(data, out, "--save-interval", "3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# ---------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("save_interval", ["4", "2"])
def test_pretrain_stops_at_the_first_nonfinite_step(data, tmp_path, save_interval):
    """The issue's command (--lr 1e6 --warmup-steps 1 --save-interval 4) and one that saves before the NaN."""
    out = tmp_path / "ckpt"
    proc = lqs(*pretrain_args(data, out, "--warmup-steps", "1", "--save-interval", save_interval, steps=12, lr="1e6"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    recs = [r for r in records(out) if "loss" in r]
    bad = [r["step"] for r in recs if r.get("nonfinite")]
    assert bad, recs
    k = bad[0]
    assert recs[-1]["step"] == k and recs[-1]["grad_norm"] in ("nan", "inf") or recs[-1]["loss"] in ("nan", "inf")
    assert all(isinstance(r["loss"], float) and not r.get("nonfinite") for r in recs[:-1])  # stopped at once
    msg = error_line(proc)
    assert f"step {k}: " in msg and "not finite" in msg and "lower --lr" in msg and "--skip-nonfinite" in msg
    saved = sorted(p.name for p in out.iterdir() if p.name.startswith("step_"))
    assert all(int(n[5:]) < k for n in saved), saved  # nothing written at or after the bad step
    if latest(out) is not None:  # latest names the last checkpoint, and its weights are finite
        assert latest(out) == saved[-1] and f"the last checkpoint, {saved[-1]}, holds finite weights" in msg
        from lqs_megatron.models.loading import load_model

        load_model(out)  # refuses non-finite weights
    if save_interval == "2":
        assert latest(out) is not None


def test_skip_nonfinite_skips_then_stops(data, tmp_path):
    out = tmp_path / "ckpt"
    proc = lqs(
        *pretrain_args(
            data, out, "--warmup-steps", "1", "--save-interval", "0", "--skip-nonfinite", "2", steps=12, lr="1e6"
        )
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    bad = [r for r in records(out) if r.get("nonfinite")]
    assert [r["skipped"] for r in bad] == [True, True, False]  # two skipped and logged, the third stops the run
    assert proc.stderr.count("batch skipped, weights unchanged") == 2
    assert "2 non-finite batch(es) were skipped already" in error_line(proc)
    assert latest(out) is None  # --save-interval 0: only the final step would have saved


def test_train_scorer_stops_at_the_first_nonfinite_step(scorer_data, tmp_path):
    out = tmp_path / "ck"
    proc = lqs(
        "train-scorer",
        "--model-config",
        "tiny",
        "--tokenizer",
        scorer_data["tokenizer"],
        "--data",
        scorer_data["data"],
        "--out",
        out,
        "--epochs",
        "2",
        "--lr",
        "1e8",
        "--warmup",
        "0",
        "--max-length",
        "64",
        "--no-tensorboard",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    msg = error_line(proc)
    assert "not finite" in msg and "lower --lr" in msg and "--warmup" in msg
    k = int(msg.split("step ")[1].split(":")[0])
    assert all(int(p.name[5:]) < k for p in out.glob("step_*"))
    if (out / "best").exists():  # a best epoch written before the NaN is finite and loads
        from lqs_megatron.scorer.model import load_scorer

        load_scorer(out)


def _with_nan(step_dir: Path) -> None:
    """Put a NaN into the model shard, with checksums that match (so only the finite check can catch it)."""
    from safetensors.torch import load_file, save_file

    from lqs_megatron.utils.integrity import digest_files, files_under, write_manifest

    f = step_dir / "model-tp00-of-01.safetensors"
    sd = load_file(f)
    sd["layers.1.attention.wo.weight"][3, 4] = float("nan")
    save_file(sd, f, {"format": "pt"})
    write_manifest(step_dir, digest_files(step_dir, files_under(step_dir)))


def test_export_and_evaluate_refuse_nonfinite_weights(data, good_run, tmp_path):
    ck = copy_run(good_run, tmp_path / "ckpt")
    _with_nan(ck / "step_00000006")
    shard = ck / "step_00000006" / "model-tp00-of-01.safetensors"
    proc = lqs("export-hf", "--checkpoint", ck, "--out", tmp_path / "hf")
    assert proc.returncode == 1 and str(shard) in error_line(proc)
    assert "'layers.1.attention.wo.weight' holds 1 non-finite" in error_line(proc)
    assert not (tmp_path / "hf").exists()
    proc = lqs("evaluate", "--model", ck, "--data", data["train"], "--max-length", "16")
    assert proc.returncode == 1 and str(shard) in error_line(proc) and "non-finite" in error_line(proc)
    assert not proc.stdout.strip()  # no loss printed


# ---------------------------------------------------------------- one run per --out


def test_two_pretrains_on_one_out(data, tmp_path):
    out = tmp_path / "ckpt"
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "lqs_megatron", *pretrain_args(data, out, "--save-interval", "10", steps=40)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lock = Path(f"{out}.lock")
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the first run never took the lock"
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 1
    msg = error_line(second)
    assert f"{lock} is locked by another run (pid {first.pid}" in msg and "pretrain" in msg
    # every record and every checkpoint is the first run's: 40 steps in order, latest = the end
    assert [r["step"] for r in records(out) if "loss" in r] == list(range(1, 41))
    assert latest(out) == "step_00000040" and json.loads(out1.strip().splitlines()[-1])["step"] == 40
    assert not lock.exists()


@pytest.mark.distributed
def test_locked_out_fails_every_rank_under_torchrun(data, tmp_path):
    from lqs_megatron.utils.lock import output_lock

    out = tmp_path / "ckpt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lqs_megatron",
        *pretrain_args(data, out),
    ]
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": REPO}
    with output_lock(out, command="holder-of-the-lock"):
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode != 0 and time.time() - t0 < 240  # no rank waits for the process-group timeout
    assert "holder-of-the-lock" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def _lock_worker(rank: int, world: int, out: str) -> None:
    from lqs_megatron.errors import LQSError
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.utils.lock import output_lock_on_main

    dims = init_distributed(device="cpu")
    with pytest.raises(LQSError, match="holder-of-the-lock"):  # rank 1 too: it hears of rank 0's refusal
        with output_lock_on_main(out, dims):
            pass
    dims.barrier()  # both ranks got here: nobody waits in a collective


@pytest.mark.distributed
def test_output_lock_on_main_fails_every_rank(tmp_path):
    from lqs_megatron.utils.lock import output_lock
    from tests.utils import spawn

    out = str(tmp_path / "ckpt")
    with output_lock(out, command="holder-of-the-lock"):
        spawn(_lock_worker, 2, out)


def test_train_scorer_takes_the_lock(scorer_data, tmp_path):
    from lqs_megatron.utils.lock import output_lock

    out = tmp_path / "ck"
    with output_lock(out, command="another-train-scorer"):
        proc = lqs(
            "train-scorer",
            "--model-config",
            "tiny",
            "--tokenizer",
            scorer_data["tokenizer"],
            "--data",
            scorer_data["data"],
            "--out",
            out,
            "--epochs",
            "1",
            "--max-length",
            "32",
        )
    assert proc.returncode == 1 and "another-train-scorer" in error_line(proc)
    assert not out.exists()


# ---------------------------------------------------------------- corrupt checkpoints


def test_truncated_model_shard_resume_falls_back_and_export_names_it(data, good_run, tmp_path):
    ck = copy_run(good_run, tmp_path / "ckpt")
    shard = ck / "step_00000006" / "model-tp00-of-01.safetensors"
    truncate(shard)
    proc = lqs("export-hf", "--checkpoint", ck, "--out", tmp_path / "hf")
    assert proc.returncode == 1 and f"{shard}: " in error_line(proc) and "truncated" in error_line(proc)
    assert not (tmp_path / "hf").exists()
    proc = lqs(*pretrain_args(data, ck, "--save-interval", "3", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping step_00000006" in proc.stderr and str(shard) in proc.stderr
    # resumed from step 3: steps 4-6 again, exactly the uninterrupted run's losses
    assert [r["loss"] for r in records(ck) if "loss" in r] == [r["loss"] for r in records(good_run) if "loss" in r]
    assert latest(ck) == "step_00000006"
    proc = lqs("export-hf", "--checkpoint", ck, "--out", tmp_path / "hf")  # the rewritten step 6 is whole
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_truncated_optimizer_resume_falls_back(data, good_run, tmp_path):
    ck = copy_run(good_run, tmp_path / "ckpt")
    opt = ck / "step_00000006" / "optimizer-tp00-of-01.pt"
    truncate(opt, 0.9)
    # one step more than the run had: a schedule change, allowed knowingly (tests/faults/test_resume_changes.py)
    proc = lqs(*pretrain_args(data, ck, "--save-interval", "3", "--resume", "--allow-changed-settings", steps=7))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping step_00000006: {opt}: " in proc.stderr
    assert "resumed from" in proc.stderr and "step_00000003 at step 3" in proc.stderr
    assert latest(ck) == "step_00000007"


def test_no_valid_checkpoint_is_a_clear_error(data, good_run, tmp_path):
    ck = copy_run(good_run, tmp_path / "ckpt")
    for step in ("step_00000003", "step_00000006"):
        truncate(ck / step / "optimizer-tp00-of-01.pt", 0.5)
    before = sorted(os.listdir(ck))
    proc = lqs(*pretrain_args(data, ck, "--save-interval", "3", "--resume"))
    assert proc.returncode == 1
    msg = error_line(proc)
    assert "no checkpoint under" in msg and "step_00000006" in msg and "step_00000003" in msg
    assert sorted(os.listdir(ck)) == before  # nothing deleted or replaced


def test_truncated_scorer_weights_are_named_by_score(scorer_run, scorer_data, tmp_path):
    ck = copy_run(scorer_run, tmp_path / "ck")
    weights = ck / "best" / "model.safetensors"
    truncate(weights, 0.7)
    proc = lqs("score", "--scorer", ck, "--data", scorer_data["proxy"], "--out", tmp_path / "scores")
    assert proc.returncode == 1 and f"{weights}: " in error_line(proc)
    assert not (tmp_path / "scores" / "scores.npy").exists()


# ---------------------------------------------------------------- full disk, rotation


def test_disk_full_during_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    """An injected ENOSPC in the second checkpoint: one line naming the directory, no .tmp left, latest intact."""
    import safetensors.torch

    from lqs_megatron.cli import main

    real = safetensors.torch.save_file
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 1000)  # a partial file, as a full disk leaves one
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "ckpt"
    rc = main(pretrain_args(data, out, "--save-interval", "3"))
    err = capsys.readouterr().err
    assert rc == 1
    assert f"lqs pretrain: error: no space left on {out} while writing checkpoint step_00000006" in err
    assert sorted(os.listdir(out)) == ["latest", "loss.png", "metrics.jsonl", "step_00000003"]
    assert latest(out) == "step_00000003" and not Path(f"{out}.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to mount a small tmpfs")
def test_real_full_disk(data, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3000k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "ckpt"
        proc = lqs(*pretrain_args(data, out, "--save-interval", "1", steps=4))
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert f"no space left on {out} while writing checkpoint step_0000000" in error_line(proc)
        names = os.listdir(out)
        assert not [n for n in names if ".tmp" in n or ".old" in n], names
        good = latest(out)
        assert good is not None and good in names
        from lqs_megatron.utils.checkpoint_format import validate_step_dir

        validate_step_dir(out / good)
    finally:
        subprocess.run(["umount", str(mnt)])


def test_max_length_beyond_the_model_is_refused(data, tmp_path, tiny_tokenizer):
    import yaml

    cfg = tmp_path / "short.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_layers": 1,
                "num_heads": 2,
                "num_kv_heads": 2,
                "max_position_embeddings": 16,
            }
        )
    )
    args = pretrain_args(data, tmp_path / "ck", steps=2)
    args[args.index("tiny")] = str(cfg)
    proc = lqs(*args)  # --max-length 32
    assert proc.returncode == 1
    assert f"--max-length 32 exceeds the 16 positions of model config {str(cfg)!r}" in error_line(proc)
    assert not (tmp_path / "ck").exists()


def test_keep_last_rotates_but_keeps_latest(data, tmp_path):
    out = tmp_path / "ckpt"
    proc = lqs(*pretrain_args(data, out, "--save-interval", "1", "--keep-last", "2", steps=5))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_00000004", "step_00000005"]
    assert latest(out) == "step_00000005"
    from lqs_megatron.training.checkpoint import rotate

    assert rotate(out, 1) == ["step_00000004"] and latest(out) == "step_00000005"
    assert [p.name for p in out.glob("step_*")] == ["step_00000005"]


# ---------------------------------------------------------------- train-scorer on a small split


@pytest.fixture(scope="module")
def scorer_data(tiny_tokenizer, tmp_path_factory) -> dict:
    """400 proxy sequences: 360 train + 40 valid (the issue's split)."""
    from tests.scorer.helpers import degraded_docs, write_dataset

    d = tmp_path_factory.mktemp("scorer")
    texts, scores = degraded_docs(400, seed=0)
    write_dataset(d / "proxy", tiny_tokenizer, texts)
    np.save(d / "scores.npy", scores)
    proc = lqs(
        "prepare-scorer-data",
        "--proxy",
        d / "proxy",
        "--scores",
        d / "scores.npy",
        "--out",
        d / "data",
        "--valid-num",
        "40",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"tokenizer": tiny_tokenizer, "data": d / "data", "proxy": d / "proxy"}


@pytest.fixture(scope="module")
def scorer_run(scorer_data, tmp_path_factory) -> Path:
    """The scorer issue's command form, without a batch size, on the 360-sequence split."""
    out = tmp_path_factory.mktemp("scorer_run") / "ck"
    proc = lqs(
        "train-scorer",
        "--model-config",
        "tiny",
        "--tokenizer",
        scorer_data["tokenizer"],
        "--data",
        scorer_data["data"],
        "--out",
        out,
        "--epochs",
        "3",
        "--lr",
        "1e-3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "summary.json").write_text(proc.stdout.strip().splitlines()[-1])
    (out / "stderr.txt").write_text(proc.stderr)
    return out


def test_train_scorer_default_batch_adapts_to_a_small_split(scorer_run):
    s = json.loads((scorer_run / "summary.json").read_text())
    assert s["global_batch_size"] == 32 and s["steps"] == 3 * (360 // 32)
    assert "optimizer step(s)" not in (scorer_run / "stderr.txt").read_text()  # 11 steps per epoch: no warning
    meta = json.loads((scorer_run / "best" / "scorer.json").read_text())["meta"]
    assert meta["args"]["global_batch_size"] == 32 and meta["best"]["epoch"] == s["best_epoch"]
    assert latest(scorer_run) == "step_00000033" and (scorer_run / "loss.png").is_file()


def test_train_scorer_warns_when_an_epoch_has_few_steps(scorer_data, tmp_path):
    proc = lqs(
        "train-scorer",
        "--model-config",
        "tiny",
        "--tokenizer",
        scorer_data["tokenizer"],
        "--data",
        scorer_data["data"],
        "--out",
        tmp_path / "ck",
        "--epochs",
        "1",
        "--global-batch-size",
        "64",
        "--max-length",
        "32",
        "--no-tensorboard",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "an epoch is only 5 optimizer step(s) (360 training sequences, --global-batch-size 64)" in proc.stderr
    proc = lqs(
        "train-scorer",
        "--model-config",
        "tiny",
        "--tokenizer",
        scorer_data["tokenizer"],
        "--data",
        scorer_data["data"],
        "--out",
        tmp_path / "ck2",
        "--batch-size",
        "512",
    )
    assert proc.returncode == 1 and "--global-batch-size 512 is larger than the training split (360" in error_line(proc)
    assert not (tmp_path / "ck2" / "latest").exists()
