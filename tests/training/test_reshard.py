"""Resharding checkpoints: a run written at tp2 x dp2 (with --distributed-optimizer) resumes at
tp1 x dp1 and at tp1 x dp4, and its next losses equal an uninterrupted tp1 run's to float
rounding; the resharded AdamW moments equal the uninterrupted run's; export-hf reads the
checkpoint as before."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.config import PretrainConfig
from tests.utils import REPO, rel_err, spawn

STEPS, SAVED = 6, 3
REPO_PATH = Path(REPO)


def _cfg(data: dict, out, **kw) -> PretrainConfig:
    base = dict(model_config="tiny", tokenizer=data["tokenizer"], data=[data["train"]], max_length=32, steps=STEPS)
    base.update(global_batch_size=4, micro_batch_size=1, make_vocab_size_divisible_by=3, lr=3e-3, seed=5)
    base.update(out=str(out), save_interval=SAVED, log_interval=1, tensorboard=False, device="cpu")
    return PretrainConfig(**{**base, **kw})


def _pretrain_worker(rank: int, world: int, cfg: PretrainConfig) -> None:
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.training.pretrainer import pretrain

    torch.set_num_threads(1)
    pretrain(cfg, init_distributed(tp=cfg.tp, device="cpu"))


def _losses(out) -> list[float]:
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    return [r["loss"] for r in recs if "loss" in r]


def _resumed_state(cfg: PretrainConfig, step_dir) -> tuple[dict, dict]:
    """``({name: weight}, {name: {moment: tensor}})`` of a one-process model resumed from ``step_dir``."""
    from lqs_megatron.models.config import load_model_config
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.training.checkpoint import load_training_state
    from lqs_megatron.training.optim import build_optimizer

    mc = load_model_config("tiny")
    mc.vocab_size = 512
    model = build_model(mc, ParallelDims(), seed=99, make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by)
    opt = build_optimizer(model, cfg.lr)
    load_training_state(step_dir, model, opt, ParallelDims())
    names = {p: n for n, p in model.named_parameters()}
    moments = {names[p]: {k: v for k, v in st.items() if v.ndim > 0} for p, st in opt.state.items()}
    return {n: p.detach() for n, p in model.named_parameters()}, moments


@pytest.mark.distributed
def test_tp2_dp2_resumes_at_tp1_and_dp4(tiny_data, tmp_path):
    from lqs_megatron.training.pretrainer import pretrain

    ref = tmp_path / "ref"
    pretrain(_cfg(tiny_data, ref), ParallelDims())  # uninterrupted, one process
    written = tmp_path / "tp2dp2"
    spawn(_pretrain_worker, 4, _cfg(tiny_data, written, tp=2, stop_after=SAVED, distributed_optimizer=True))
    step = f"step_{SAVED:08d}"
    meta = json.loads((written / step / "config.json").read_text())
    assert (meta["tp"], meta["padded_vocab_size"]) == (2, 516)  # padded for tp2 (the ref: 513 rows)
    np.testing.assert_allclose(_losses(written), _losses(ref)[:SAVED], rtol=2e-5)
    # the resharded weights and AdamW moments are the uninterrupted run's at that step
    cfg = _cfg(tiny_data, ref)
    (w_ref, m_ref), (w, m) = _resumed_state(cfg, ref / step), _resumed_state(cfg, written / step)
    assert sorted(m) == sorted(m_ref) == sorted(w)
    for name in w:  # float rounding (tp2 sums in another order); a dropped or misplaced moment is O(1)
        assert rel_err(w[name], w_ref[name]) < 1e-5, name
        for k in ("exp_avg", "exp_avg_sq"):
            assert rel_err(m[name][k], m_ref[name][k]) < 1e-4, f"{name} {k}: {rel_err(m[name][k], m_ref[name][k])}"

    one = tmp_path / "tp1dp1"
    shutil.copytree(written, one)
    pretrain(_cfg(tiny_data, one, resume=True), ParallelDims())
    np.testing.assert_allclose(_losses(one)[SAVED:], _losses(ref)[SAVED:], rtol=2e-5)

    four = tmp_path / "tp1dp4"
    shutil.copytree(written, four)
    spawn(_pretrain_worker, 4, _cfg(tiny_data, four, resume=True, distributed_optimizer=True))
    np.testing.assert_allclose(_losses(four)[SAVED:], _losses(ref)[SAVED:], rtol=2e-5)


OLD = REPO_PATH / "tests" / "training" / "golden" / "old_checkpoint"


def test_old_checkpoint_resumes_resharded_and_exports(tmp_path, monkeypatch):
    """A tp2 checkpoint written by the code before this format grew resharding (``OLD``, see its
    losses.json) resumes in one process and continues the old uninterrupted tp2 run's losses;
    export-hf and load_model read it as before."""
    from lqs_megatron.models.loading import load_model
    from lqs_megatron.training.export import export_hf
    from lqs_megatron.training.pretrainer import pretrain

    monkeypatch.chdir(REPO_PATH)  # the fixture stores its data and model config relative to the repository
    ref = json.loads((OLD / "losses.json").read_text())["losses"]
    out = tmp_path / "ckpt"
    shutil.copytree(OLD / "ckpt", out)
    step = out / "step_00000003"
    tok = shutil.copytree(step / "tokenizer", tmp_path / "tok")  # an input outside --out (the output rule)
    cfg = PretrainConfig(
        model_config=str((OLD / "micro.yaml").relative_to(REPO_PATH)),
        tokenizer=str(tok),
        data=[str((OLD / "data").relative_to(REPO_PATH))],
        max_length=32,
        global_batch_size=4,
        micro_batch_size=2,
        lr=3e-3,
        seed=5,
        steps=6,
        make_vocab_size_divisible_by=3,
        save_interval=3,
        out=str(out),
        resume=True,
        tensorboard=False,
        device="cpu",
    )
    pretrain(cfg, ParallelDims())
    np.testing.assert_allclose(_losses(out), ref[3:], rtol=2e-5)  # steps 4-6 (the logs are not in the fixture)
    export_hf(step, tmp_path / "hf")
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    model = load_model(step).eval()
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        assert rel_err(hf(input_ids=ids).logits, model.logits(model(ids))) < 1e-5


OTHER_MODELS = [(1, 12, 61), (2, 12, 512), (2, 8, 500)]  # (tp written, hidden, vocabulary of the resuming model)


@pytest.mark.parametrize("tp_written,hidden,vocab", OTHER_MODELS, ids=["same-tp", "resharded", "resharded-vocab"])
def test_another_model_is_one_clear_error(tmp_path, tp_written, hidden, vocab):
    """Resuming into a model of another width or vocabulary (same tp, or through the resharding
    path, which must not fit another vocabulary's rows) is an LQSError naming the step directory."""
    from lqs_megatron.errors import LQSError
    from lqs_megatron.models.config import ModelConfig
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.training.checkpoint import load_training_state
    from lqs_megatron.training.optim import build_optimizer

    small = dict(intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=2)
    step = OLD / "ckpt" / "step_00000003"  # hidden 8, vocab 512, tp2
    if tp_written == 1:
        from lqs_megatron.training.checkpoint import save_checkpoint

        model = build_model(ModelConfig(hidden_size=8, vocab_size=61, **small), ParallelDims(), seed=3)
        meta = {"model": model.config.to_dict(), "padded_vocab_size": 61, "tp": 1, "step": 1}
        save_checkpoint(tmp_path, 1, model, build_optimizer(model, 1e-3), ParallelDims(), meta, {"world_size": 1})
        step = tmp_path / "step_00000001"
    other = build_model(ModelConfig(hidden_size=hidden, vocab_size=vocab, **small), ParallelDims(), seed=3)
    with pytest.raises(LQSError, match=f"{step} holds another model than this run's"):
        load_training_state(step, other, build_optimizer(other, 1e-3), ParallelDims())
