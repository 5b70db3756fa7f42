"""`lqs annotate` under faults: a second run on a locked --out, and a rerun killed midway that must
leave the previous run's finished scores whole."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from lqs_megatron.utils.lock import lock_path, output_lock
from tests.lqs.conftest import tiny_mistral, write_dataset
from tests.utils import run_lqs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("annotate_faults")
    rng = np.random.default_rng(5)
    target = [rng.integers(0, 24, rng.integers(6, 14)) for _ in range(6)]
    proxy = [rng.integers(0, 96, rng.integers(4, 14)) for _ in range(8)]
    return {
        "model": tiny_mistral(d / "model"),
        "train": write_dataset(d / "train", target),
        "target": write_dataset(d / "target", target),
        "proxy": write_dataset(d / "proxy", proxy),
    }


def _annotate(inputs, out, lr, env=None, *extra):
    args = ["annotate", *sum(([f"--{k}", v] for k, v in inputs.items()), []), "--out", out, "--lr", lr]
    args += ["--steps", 4, "--interval", 2, "--batch-size", 3, "--max-length", 16, *extra]
    return run_lqs(*args, check=False, env=env)


OUTPUTS = ("raw_scores.npy", "scores.npy", "example_loss.npy", "annotate.json")


@pytest.mark.slow
def test_killed_rerun_keeps_the_finished_scores(inputs, tmp_path):
    out = tmp_path / "out"
    first = _annotate(inputs, out, 0.1)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    # a fresh run (no --resume, other flags) killed after its first scoring step
    killed = _annotate(inputs, out, 0.3, {"LQS_TEST_KILL_AFTER_SCORING_STEPS": "1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "state" / "state.json").is_file()  # it did run its replay and score a step
    for name in OUTPUTS:
        assert (out / name).read_bytes() == before[name], f"{name} of the finished run changed"
    # the same fresh run, to the end: the new scores replace the old ones, all together
    second = _annotate(inputs, out, 0.3)
    assert second.returncode == 0, second.stderr[-2000:]
    rec = json.loads((out / "annotate.json").read_text())
    assert rec["arguments"]["lr"] == 0.3
    assert not np.array_equal(np.load(out / "raw_scores.npy"), np.load(io.BytesIO(before["raw_scores.npy"])))
    assert not (out / "state").exists() and not os.path.exists(lock_path(out))


@pytest.mark.slow
def test_second_run_on_a_locked_out_fails_naming_the_holder(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "raw_scores.npy").write_bytes(b"previous")
    with output_lock(out, command="lqs annotate --out first-run"):
        proc = _annotate(inputs, out, 0.1)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lqs annotate: error:") and "is locked by another run" in line
    assert "lqs annotate --out first-run" in line and f"pid {os.getpid()}" in line
    assert "Traceback" not in proc.stderr
    assert (out / "raw_scores.npy").read_bytes() == b"previous" and not (out / "state").exists()
