"""`lqs train-scorer`: it learns a property of the text, DP=2 equals one process, resume is exact."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file

from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.config import PrepareScorerConfig, ScoreRun, TrainScorerRun
from lqs_megatron.scorer.data import prepare_scorer_data
from lqs_megatron.scorer.infer import score_dataset
from lqs_megatron.scorer.train import TrainScorerConfig, schedule, train_scorer
from tests.scorer.helpers import degraded_docs, write_dataset
from tests.utils import REPO, assert_close, rel_err, run_lqs


def latest(out):
    """The newest checkpoint directory of a train-scorer output."""
    return out / (out / "latest").read_text().strip()


TRAIN_FLAGS = ["--model-config", "tiny", "--max-length", "96", "--lr", "3e-3", "--warmup", "5"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, tiny_tokenizer):
    """A proxy set of 360 degraded documents (score = -share of junk words) and 150 held-out ones."""
    d = tmp_path_factory.mktemp("train")
    texts, scores = degraded_docs(360, seed=0)
    write_dataset(d / "proxy", tiny_tokenizer, texts)
    np.save(d / "scores.npy", scores)
    texts, scores = degraded_docs(150, seed=1)
    write_dataset(d / "heldout", tiny_tokenizer, texts)
    np.save(d / "heldout_scores.npy", scores)
    run_lqs("prepare-scorer-data", "--proxy", d / "proxy", "--scores", d / "scores.npy", "--out", d / "data")
    return d


def test_scorer_ranks_heldout_data_by_its_true_quality(proxy, tiny_tokenizer):
    d = proxy
    run_lqs(
        "train-scorer",
        *TRAIN_FLAGS,
        "--tokenizer",
        tiny_tokenizer,
        "--data",
        d / "data",
        "--out",
        d / "ckpt",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--micro-batch-size",
        "8",
    )
    history = [json.loads(x) for x in (d / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    valid = [h for h in history if "valid_pearson" in h]
    assert len(valid) == 4 and {"valid_mse", "valid_spearman"} <= set(valid[0])
    best = max(valid, key=lambda h: h["valid_pearson"])
    meta = json.loads((d / "ckpt" / "best" / "scorer.json").read_text())["meta"]
    assert meta["best"]["epoch"] == best["epoch"] and meta["selected_by"] == "pearson"
    assert (d / "ckpt" / "best" / "tokenizer" / "tokenizer_config.json").is_file()

    run_lqs("score", "--scorer", d / "ckpt", "--data", d / "heldout", "--out", d / "out", "--tokenizer", tiny_tokenizer)
    pred = np.load(d / "out" / "scores.npy")
    rho = scipy.stats.spearmanr(pred, np.load(d / "heldout_scores.npy"))[0]
    assert rho > 0.8, f"held-out Spearman {rho:.3f}"


def _dp_worker(rank, world, data, out, tokenizer):
    from lqs_megatron.parallel.dims import init_distributed

    cfg = TrainScorerConfig(epochs=1, lr=3e-3, warmup_steps=2, global_batch_size=16, micro_batch_size=4, max_length=64)
    run = TrainScorerRun(data, out, model_config="tiny", tokenizer=tokenizer)
    train_scorer(run, cfg, dims=init_distributed(), progress=False)


@pytest.mark.distributed
def test_two_data_parallel_ranks_match_one_process(proxy, tiny_tokenizer, tmp_path):
    from tests.utils import spawn

    cfg = TrainScorerConfig(epochs=1, lr=3e-3, warmup_steps=2, global_batch_size=16, micro_batch_size=8, max_length=64)
    one = TrainScorerRun(proxy / "data", tmp_path / "one", model_config="tiny", tokenizer=tiny_tokenizer)
    train_scorer(one, cfg, progress=False)
    spawn(_dp_worker, 2, str(proxy / "data"), str(tmp_path / "two"), tiny_tokenizer)
    # the same global batches: the logged losses agree, and so do the weights (up to float32
    # summation order, which Adam amplifies only on near-zero gradient entries)
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
        for run in ("one", "two")
    ]
    assert len(losses[0]) == 2  # 20 steps, logged every 10
    assert_close(losses[1], losses[0], rtol=1e-5, name="train loss")
    one = load_file(latest(tmp_path / "one") / "model.safetensors")
    two = load_file(latest(tmp_path / "two") / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        assert rel_err(two[k], one[k]) < 1e-4, k


class _Killed(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(proxy, tiny_tokenizer, tmp_path, monkeypatch, caplog):
    cfg = TrainScorerConfig(epochs=2, lr=3e-3, warmup_steps=3, global_batch_size=32, micro_batch_size=16, max_length=64)
    cfg.save_interval = 4

    def run(out, resume=False):
        return TrainScorerRun(proxy / "data", out, model_config="tiny", tokenizer=tiny_tokenizer, resume=resume)

    full = train_scorer(run(tmp_path / "full"), cfg, progress=False)

    def dying_schedule(c, total):
        lr_of = schedule(c, total)

        def lr(step):
            if step == 14:  # in epoch 2 (10 steps per epoch), two steps after the save at global step 12
                raise _Killed
            return lr_of(step)

        return lr

    monkeypatch.setattr("lqs_megatron.scorer.train.schedule", dying_schedule)
    with pytest.raises(_Killed):
        train_scorer(run(tmp_path / "cut"), cfg, progress=False)
    trainer = json.loads((latest(tmp_path / "cut") / "trainer.json").read_text())
    assert (trainer["epoch"], trainer["step_in_epoch"], trainer["global_step"]) == (1, 2, 12)
    import shutil

    old = tmp_path / "old"  # the same state in the layout before step directories: OUT/last, no checksums
    shutil.copytree(latest(tmp_path / "cut"), old / "last")
    (old / "last" / "checksums.json").unlink()
    saved = json.loads((old / "last" / "scorer.json").read_text())  # and its settings under their names of then
    args = saved["meta"]["args"]
    args["batch_size"], args["warmup"] = args.pop("global_batch_size"), args.pop("warmup_steps")
    (old / "last" / "scorer.json").write_text(json.dumps(saved))
    corrupt = tmp_path / "corrupt"  # the newest checkpoint truncated: resume falls back to the one before (step 10)
    shutil.copytree(tmp_path / "cut", corrupt)
    weights = latest(corrupt) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    monkeypatch.setattr("lqs_megatron.scorer.train.schedule", schedule)
    with pytest.raises(LQSError, match="pass --resume"):
        train_scorer(run(tmp_path / "cut"), cfg, progress=False)
    with pytest.raises(LQSError, match="--global-batch-size was 32, now 16"):
        train_scorer(run(tmp_path / "cut", resume=True), dataclasses.replace(cfg, global_batch_size=16), progress=False)
    resumed = train_scorer(run(tmp_path / "cut", resume=True), cfg, progress=False)
    assert resumed["steps"] == full["steps"] == 20 and resumed["best_epoch"] == full["best_epoch"]
    assert resumed["best_valid"] == full["best_valid"]
    # bit for bit: the weights, the optimizer state and the last grad norm (a scorer loaded as a plain
    # Decoder summed the clipping norm in another order and drifted by ~3e-7)
    a = load_file(latest(tmp_path / "full") / "model.safetensors")
    b = load_file(latest(tmp_path / "cut") / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(b[k], a[k])] == []
    oa, ob = (torch.load(latest(tmp_path / r) / "optimizer.pt") for r in ("full", "cut"))
    for p, state in oa["state"].items():
        assert all(torch.equal(v, ob["state"][p][k]) for k, v in state.items()), p

    def logged(run):  # step -> grad norm (the logged loss is a mean since the last record: not comparable)
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {m["step"]: m["grad_norm"] for m in map(json.loads, lines) if "grad_norm" in m}

    full_log, cut_log = logged("full"), logged("cut")
    after = [s for s in cut_log if s > 12]
    assert after and all(cut_log[s] == full_log[s] for s in after), (full_log, cut_log)

    with caplog.at_level(logging.WARNING, logger="lqs_megatron.scorer.train"):
        fell_back = train_scorer(run(corrupt, resume=True), cfg, progress=False)
    assert any(f"skipping step_00000012: {weights}: " in r.getMessage() for r in caplog.records)
    assert fell_back["best_valid"] == resumed["best_valid"]

    # a run written before step directories still resumes
    with pytest.raises(LQSError, match="pass --resume"):
        train_scorer(run(old), cfg, progress=False)
    with pytest.raises(LQSError, match="--global-batch-size was 32, now 16"):
        train_scorer(run(old, resume=True), dataclasses.replace(cfg, global_batch_size=16), progress=False)
    legacy = train_scorer(run(old, resume=True), cfg, progress=False)
    assert legacy["steps"] == 20 and legacy["best_valid"] == resumed["best_valid"]
    assert latest(old).name == "step_00000020"


def test_hf_fallback_backbone_trains_and_scores(proxy, tiny_tokenizer, tmp_path):
    import transformers

    hf = tmp_path / "xglm"  # a causal LM outside the fast path (DELT's fairseq-dense family)
    cfg = transformers.XGLMConfig(
        vocab_size=512, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=128
    )
    transformers.XGLMForCausalLM(cfg).save_pretrained(hf)
    tcfg = TrainScorerConfig(
        epochs=1, lr=1e-3, warmup_steps=2, global_batch_size=32, micro_batch_size=16, max_length=64
    )
    (tmp_path / "empty").mkdir()  # (not tmp_path itself: --out inside --base is refused by the output rule)
    with pytest.raises(LQSError, match="no config.json"):
        empty = str(tmp_path / "empty")
        train_scorer(TrainScorerRun(proxy / "data", tmp_path / "x", base=empty, tokenizer=tiny_tokenizer), tcfg)
    run = TrainScorerRun(proxy / "data", tmp_path / "ckpt", base=str(hf), tokenizer=tiny_tokenizer)
    res = train_scorer(run, tcfg, progress=False)
    assert res["steps"] == 10
    assert json.loads((tmp_path / "ckpt" / "best" / "scorer.json").read_text())["backbone"] == "hf"
    stats = score_dataset(ScoreRun(tmp_path / "ckpt", proxy / "heldout", tmp_path / "scored", progress=False))
    assert stats["num_sequences"] == 150 and np.isfinite(np.load(tmp_path / "scored" / "scores.npy")).all()


def test_batch_flags_are_checked(proxy, tiny_tokenizer, tmp_path):
    def run(out):
        return TrainScorerRun(proxy / "data", out, model_config="tiny", tokenizer=tiny_tokenizer)

    with pytest.raises(LQSError, match="larger than the training split"):
        train_scorer(run(tmp_path / "a"), TrainScorerConfig(global_batch_size=1024, micro_batch_size=8), progress=False)
    with pytest.raises(LQSError, match="not a multiple"):
        train_scorer(run(tmp_path / "b"), TrainScorerConfig(global_batch_size=20, micro_batch_size=8), progress=False)
    with pytest.raises(LQSError, match="--lr"):
        TrainScorerConfig(lr=0)
    proc = subprocess.run(
        [sys.executable, "-m", "lqs_megatron", "train-scorer", "--data", proxy / "data", "--out", tmp_path / "c"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "one of the arguments --base --model-config is required" in proc.stderr


def test_scorer_tokenizer_must_match_the_data(proxy, tiny_tokenizer, tmp_path):
    from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer
    from tests.conftest import demo_texts

    other = tmp_path / "tok"
    train_tokenizer(demo_texts(), other, vocab_size=600, num_threads=1)
    data = tmp_path / "data"  # the same proxy, this time with its tokenizer recorded
    prepare_scorer_data(
        PrepareScorerConfig(
            proxy / "proxy", proxy / "scores.npy", data, src_tokenizer=tiny_tokenizer, dst_tokenizer=tiny_tokenizer
        )
    )
    cfg = TrainScorerConfig(epochs=1, global_batch_size=32, micro_batch_size=16, max_length=32)
    with pytest.raises(LQSError, match="retokenize the data for the scorer.*--allow-tokenizer-mismatch"):
        train_scorer(
            TrainScorerRun(data, tmp_path / "ckpt", model_config="tiny", tokenizer=str(other)), cfg, progress=False
        )
    out = train_scorer(
        TrainScorerRun(
            data, tmp_path / "ckpt", model_config="tiny", tokenizer=str(other), allow_tokenizer_mismatch=True
        ),
        cfg,
        progress=False,
    )
    assert out["steps"] >= 1 and (tmp_path / "ckpt" / "latest").is_file()
