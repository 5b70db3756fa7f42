"""`lqs pipeline` end to end on a tiny config: every public step for real (subprocesses), the
final table, reuse of finished steps, and a SIGKILL in the middle of a step followed by a rerun
that resumes at that step and ends with the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.utils import REPO

pytestmark = pytest.mark.slow


def _config(corpus_dir, workdir) -> dict:
    return {
        "workdir": str(workdir),
        "data": {
            "corpus": [str(corpus_dir / "corpus.jsonl")],
            "target": str(corpus_dir / "target.jsonl"),
            "labels": str(corpus_dir / "labels.npy"),
            "max_length": 65,
            "workers": 1,
        },
        "tokenizer": {"vocab_size": 384},
        "annotation_model": {"model_config": "tiny", "steps": 8, "lr": 3e-3, "global_batch_size": 8, "max_length": 32},
        "proxy": {"num": 48, "seed": 3},
        "annotate": {"methods": ["lqs"], "steps": 4, "lr": 0.008, "batch_size": 4, "interval": 2, "max_length": 32},
        "scorer": {"base": "annotation", "epochs": 1, "lr": 5e-4, "batch_size": 8, "warmup": 2, "valid_num": 8},
        "selection": {"method": "top-r", "r": 0.5, "order": "folding", "layers": 3},
        "pretrain": {
            "model_config": "tiny",
            "steps": 12,
            "lr": 3e-3,
            "global_batch_size": 8,
            "max_length": 32,
            "extra_args": ["--save-interval", "3"],
        },
        "evaluate": {"max_length": 64},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 400-document slice of the demo corpus (with its labels) and 24 target conversations."""
    from lqs_megatron.demo.corpus import build_demo_corpus

    full = tmp_path_factory.mktemp("demo")
    paths = build_demo_corpus(full)["paths"]
    out = tmp_path_factory.mktemp("corpus")
    with open(paths["corpus"]) as f:
        lines = f.readlines()[:400]
    (out / "corpus.jsonl").write_text("".join(lines))
    np.save(out / "labels.npy", np.load(paths["labels"])[:400])
    with open(paths["target"]) as f:
        (out / "target.jsonl").write_text("".join(f.readlines()[:24]))
    return out


def _start(cfg: dict, path) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lqs_megatron", "pipeline", "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _step_lines(out: str) -> dict[str, str]:
    """``{step name: its last progress line}`` from the pipeline's output."""
    found = (re.match(r"^\[\s*\d+/\d+\]\s+(\S+)", ln) for ln in out.splitlines())
    return {m.group(1): m.string for m in found if m}


def _losses(workdir) -> dict:
    res = json.loads((workdir / "results.json").read_text())
    return {arm: a["target_loss"] for arm, a in res["arms"].items()}


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("run_a")
    out = _finish(_start(_config(corpus, d / "work"), d / "p.yaml"))
    return d / "work", out, _losses(d / "work")  # losses kept before later tests change the workdir


def test_pipeline_runs_every_step_and_prints_the_table(uninterrupted):
    work, out, _ = uninterrupted
    res = json.loads((work / "results.json").read_text())
    assert set(res["arms"]) == {"lqs", "random"}
    for arm in res["arms"].values():
        assert np.isfinite(arm["target_loss"]) and arm["train_tokens"] == 12 * 8 * 32
    assert set(res["auc"]) == {"lqs scorer (whole corpus)", "lqs annotation (proxy set)"}
    assert "target loss" in out and "AUC" in out
    assert (work / "pipeline.yaml").is_file() and len(list((work / "logs").glob("*.log"))) == len(res["timings"])
    # every step gets today's flags (no deprecated spelling) and knows its data's tokenizer
    warned = [p.name for p in (work / "logs").glob("*.log") if re.search(r"is unknown|deprecated", p.read_text())]
    assert not warned, warned
    # the selection behind the lqs arm is the scorer's top half of the corpus, in folding order
    scores = np.load(work / "scores" / "lqs" / "scores.npy")
    kept = np.load(work / "curated" / "lqs" / "selected.indices.npy")
    assert len(kept) == len(scores) // 2 and scores[kept].min() >= np.sort(scores)[len(scores) - len(kept) - 1]


def test_rerun_reuses_every_step(uninterrupted, tmp_path):
    work, _, before = uninterrupted
    cfg = yaml.safe_load((work / "pipeline.yaml").read_text())
    out = _finish(_start(cfg, tmp_path / "p.yaml"))
    steps = _step_lines(out)
    assert len(steps) == 22 and all("reused" in ln for ln in steps.values()), steps
    assert _losses(work) == before


def test_changed_hyperparameter_reruns_only_downstream_steps(uninterrupted, tmp_path):
    work, _, _ = uninterrupted
    cfg = yaml.safe_load((work / "pipeline.yaml").read_text())
    cfg["evaluate"]["micro_batch_size"] = 5  # evaluate's own (max_length is also the arms' curves')
    out = _finish(_start(cfg, tmp_path / "p.yaml"))
    ran = {name for name, ln in _step_lines(out).items() if "done in" in ln}
    assert ran == {"evaluate-lqs", "evaluate-random"}, ran


def test_killed_in_a_step_resumes_there_with_the_same_results(corpus, uninterrupted, tmp_path):
    _, _, expected = uninterrupted
    work = tmp_path / "work"
    cfg = _config(corpus, work)
    proc = _start(cfg, tmp_path / "p.yaml")
    victim = "pretrain-lqs"
    ckpt = work / "final" / "lqs" / "ckpt"
    deadline = time.time() + 600
    while not (ckpt / "latest").exists():  # kill once the step has written its first checkpoint
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the step's process dies with the pipeline (PR_SET_PDEATHSIG)
    assert not (work / ".pipeline" / f"{victim}.json").exists() and not (work / "results.json").exists()

    out = _finish(_start(cfg, tmp_path / "p.yaml"))
    lines = _step_lines(out)
    assert "reused" in lines["annotate-lqs"] and "reused" in lines["order-lqs"]
    assert "done in" in lines[victim]
    log = (work / "logs" / f"{victim}.log").read_text()
    assert "--resume" in log.splitlines()[0]
    assert _losses(work) == pytest.approx(expected, rel=1e-6)
