"""``--resume`` with changed settings (issue 24): pretrain and train-scorer accepted a new --lr silently,
annotate restarted from scratch silently. One mechanism (``utils/resume.py``) for the three: a change is
refused with one line naming the flag and both values, unless ``--allow-changed-settings``; then the change
is logged and recorded in the run's metadata. A change that cannot be continued (the data order, the
model) is refused always."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.lqs.conftest import tiny_mistral, write_dataset
from tests.utils import run_lqs

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def lqs(*args, env=None):
    return run_lqs(*args, check=False, env={**ONE_THREAD, **(env or {})})


def error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def fresh_lr(low: float, high: float) -> float:
    """A learning rate drawn afresh (never a fixed constant the code could special-case), 4 digits."""
    return float(f"{np.random.default_rng().uniform(low, high):.4g}")


# ---------------------------------------------------------------- pretrain


def test_pretrain_resume_with_another_lr(tiny_tokenizer, tmp_path):
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from tests.conftest import demo_texts
    from tests.training.conftest import write_tokens

    tok = load_tokenizer(tiny_tokenizer)
    docs = [tok(t).input_ids + [tok.eos_token_id] for t in demo_texts()[:40]]
    data = write_tokens(tmp_path / "train", docs)
    out = tmp_path / "ck"
    lr, new_lr = fresh_lr(1e-3, 5e-3), fresh_lr(6e-3, 9e-3)

    def pretrain(*extra, lr=lr):
        return lqs(
            "pretrain",
            "--model-config",
            "tiny",
            "--tokenizer",
            tiny_tokenizer,
            "--data",
            data,
            "--max-length",
            32,
            "--global-batch-size",
            4,
            "--steps",
            6,
            "--lr",
            lr,
            "--save-interval",
            3,
            "--min-lr",
            1e-4,
            "--out",
            out,
            "--no-tensorboard",
            *extra,
        )

    first = pretrain("--stop-after", 3)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = pretrain("--resume", lr=new_lr)
    line = error_line(refused)
    assert f"--resume from {out / 'step_00000003'}: --lr was {lr!r}, now {new_lr!r}" in line
    assert "--allow-changed-settings" in line
    assert (out / "latest").read_text().strip() == "step_00000003"  # nothing trained, nothing written
    # the data order is refused even with the flag
    stream = pretrain("--resume", "--allow-changed-settings", "--global-batch-size", 8)
    assert "--global-batch-size was 4, now 8; the data order or the model would change" in error_line(stream)
    ok = pretrain("--resume", "--allow-changed-settings", lr=new_lr)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"--lr was {lr!r}, now {new_lr!r}" in ok.stderr  # logged
    trainer = json.loads((out / "step_00000006" / "trainer.json").read_text())
    assert trainer["resume_changes"] == [{"step": 3, "setting": "--lr", "was": lr, "now": new_lr}]
    assert trainer["config"]["lr"] == new_lr


# ---------------------------------------------------------------- train-scorer


def test_train_scorer_resume_with_another_lr(tiny_tokenizer, tmp_path):
    from tests.scorer.helpers import degraded_docs
    from tests.scorer.helpers import write_dataset as write_texts

    texts, scores = degraded_docs(200, seed=int(np.random.default_rng().integers(0, 1000)))
    write_texts(tmp_path / "proxy", tiny_tokenizer, texts)
    np.save(tmp_path / "scores.npy", scores)
    prep = lqs(
        "prepare-scorer-data",
        "--proxy",
        tmp_path / "proxy",
        "--scores",
        tmp_path / "scores.npy",
        "--out",
        tmp_path / "data",
        "--valid-num",
        40,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    out = tmp_path / "ck"
    lr, new_lr = fresh_lr(1e-4, 9e-4), fresh_lr(1e-3, 5e-3)

    def train(*extra, lr=lr, epochs=1):
        return lqs(
            "train-scorer",
            "--model-config",
            "tiny",
            "--tokenizer",
            tiny_tokenizer,
            "--data",
            tmp_path / "data",
            "--out",
            out,
            "--epochs",
            epochs,
            "--lr",
            lr,
            "--global-batch-size",
            16,
            "--max-length",
            32,
            "--no-tensorboard",
            *extra,
        )

    first = train()
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "latest").read_text()
    line = error_line(train("--resume", lr=new_lr, epochs=2))
    assert f"--epochs was 1, now 2; --lr was {lr!r}, now {new_lr!r}" in line and "--allow-changed-settings" in line
    assert (out / "latest").read_text() == before
    line = error_line(train("--resume", "--allow-changed-settings", "--seed", 7, epochs=2))
    assert "--seed was 0, now 7; the data order or the model would change" in line
    ok = train("--resume", "--allow-changed-settings", lr=new_lr, epochs=2)
    assert ok.returncode == 0, ok.stderr[-3000:]
    trainer = json.loads((Path(out) / (out / "latest").read_text().strip() / "trainer.json").read_text())
    assert [(c["setting"], c["was"], c["now"]) for c in trainer["resume_changes"]] == [
        ("--epochs", 1, 2),
        ("--lr", lr, new_lr),
    ]
    assert trainer["epoch"] == 2


# ---------------------------------------------------------------- annotate


@pytest.fixture
def annotate_inputs(tmp_path) -> dict:
    rng = np.random.default_rng()
    target = [rng.integers(0, 24, rng.integers(6, 14)) for _ in range(6)]
    proxy = [rng.integers(0, 96, rng.integers(4, 14)) for _ in range(8)]
    return {
        "model": tiny_mistral(tmp_path / "model"),
        "train": write_dataset(tmp_path / "train", target),
        "target": write_dataset(tmp_path / "target", target),
        "proxy": write_dataset(tmp_path / "proxy", proxy),
    }


def test_annotate_resume_with_another_lr(annotate_inputs, tmp_path):
    out = tmp_path / "out"
    lr, new_lr = fresh_lr(0.01, 0.05), fresh_lr(0.06, 0.1)

    def annotate(*extra, lr=lr, env=None):
        args = [a for k, v in annotate_inputs.items() for a in (f"--{k}", v)]
        return lqs(
            "annotate",
            *args,
            "--out",
            out,
            "--lr",
            lr,
            "--steps",
            4,
            "--interval",
            2,
            "--global-batch-size",
            3,
            "--max-length",
            16,
            *extra,
            env=env,
        )

    killed = annotate(env={"LQS_TEST_KILL_AFTER_SCORING_STEPS": "1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = (out / "state" / "state.json").read_text()
    line = error_line(annotate("--resume", lr=new_lr))
    assert f"--resume from {out}: --lr was {lr!r}, now {new_lr!r}" in line and "--allow-changed-settings" in line
    assert (out / "state" / "state.json").read_text() == state  # the killed run's state is untouched
    ok = annotate("--resume", "--allow-changed-settings", lr=new_lr)
    assert ok.returncode == 0, ok.stderr[-3000:]
    rec = json.loads((out / "annotate.json").read_text())
    assert rec["arguments"]["lr"] == new_lr
    assert rec["resume_changes"] == [{"setting": "--lr", "was": lr, "now": new_lr}]
    assert "resuming the backward sweep" not in ok.stderr  # the invalidated sweep started afresh
