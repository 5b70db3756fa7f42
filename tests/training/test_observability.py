"""The one progress/metrics facility (utils/progress.py): metrics.jsonl, TensorBoard, wandb, loss.png,
through pretrain and train-scorer."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.utils.progress import MetricsLog, Progress, plot_metrics, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def tb_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_metrics_log_records_resume_and_nonfinite(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as m:
        for s in range(1, 6):
            m.write({"step": s, "loss": 1.0 / s, "grad_norm": math.inf if s == 5 else 0.5})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[-1]["grad_norm"] == "inf"  # valid JSON
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG
    # a run resumed at step 3 drops the records the killed run wrote after it (and a torn last line)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    with MetricsLog(tmp_path, start_step=3, tensorboard=False, plot=False) as m:
        m.write({"step": 4, "loss": 0.2})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")][-2:] == [(3, 1 / 3), (4, 0.2)]
    # inactive ranks write nothing
    with MetricsLog(tmp_path / "rank1", active=False) as m:
        m.write({"step": 1, "loss": 1.0})
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_tags(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path, plot=False) as m:
        m.write({"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": math.nan})
        m.write({"step": 1, "valid_loss": 3.0})
        m.write({"step": 2, "annotate/target_loss": 4.0})
    tb = tb_scalars(tmp_path / "tb")
    assert tb["train/loss"] == [(1, 2.0)] and tb["valid/valid_loss"] == [(1, 3.0)]
    assert tb["annotate/target_loss"] == [(2, 4.0)] and "train/grad_norm" not in tb  # NaN skipped


class _FakeWandb(types.ModuleType):
    """Records what the facility asks of wandb (the real package needs an account or writes offline runs)."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kw):
        self.calls.append(("init", kw))
        return self

    def log(self, data, step):
        self.calls.append(("log", data, step))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_run_gets_the_numbers_and_resumes_the_same_run(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLog(tmp_path, tensorboard=False, wandb_project="proj", config={"lr": 1e-3}, plot=False) as m:
        m.write({"step": 3, "loss": 2.5, "grad_norm": math.nan})
    (kind, init), *rest = fake.calls
    assert kind == "init" and init["project"] == "proj" and init["config"] == {"lr": 1e-3}
    assert init["dir"] == str(tmp_path) and init["resume"] == "allow"
    assert rest == [("log", {"train/loss": 2.5}, 3), ("finish",)]
    with MetricsLog(tmp_path, start_step=3, tensorboard=False, wandb_project="proj", plot=False):
        pass
    assert fake.calls[3][1]["id"] == init["id"] == json.loads((tmp_path / "wandb.json").read_text())["id"]
    with MetricsLog(tmp_path, tensorboard=False, wandb_project="proj", plot=False):  # a fresh run: a new wandb run
        pass
    assert fake.calls[5][1]["id"] != init["id"]


def test_wandb_missing_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys, tiny_tokenizer):
    from lqs_megatron.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    out = tmp_path / "ckpt"
    rc = main(
        [
            "pretrain",
            "--model-config",
            "tiny",
            "--tokenizer",
            tiny_tokenizer,
            "--data",
            str(tmp_path / "x"),
            "--steps",
            "2",
            "--max-length",
            "8",
            "--global-batch-size",
            "2",
            "--lr",
            "1e-3",
            "--out",
            str(out),
            "--wandb",
            "proj",
        ]
    )
    assert rc == 1 and "--wandb needs the wandb package: pip install wandb" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_real_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLog(tmp_path, tensorboard=False, wandb_project="lqs-test", plot=False) as m:
        m.write({"step": 1, "loss": 1.0})
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_plot_metrics_draws_the_curves(tmp_path):
    recs = [{"step": s, "loss": 3 / s, "lr": 1e-3, "grad_norm": 1.0} for s in range(1, 40)]
    recs += [{"step": 20, "valid_loss": 1.0}, {"epoch": 1, "step": 39, "valid_pearson": 0.5, "valid_mse": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    (tmp_path / "empty.jsonl").write_text('{"step": 1, "note": "x"}\n')
    assert plot_metrics(tmp_path / "empty.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_progress_counts_and_logs_without_a_terminal(caplog):
    import logging

    p = Progress("steps", unit="step", total=10, initial=2, log_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="lqs_megatron.data"):
        p.set_postfix("loss 1.5")
        p.update(3, tokens=300)
    p.close()
    assert p.count == 3 and p.tokens == 300
    assert any("steps: 5/10 steps" in r.getMessage() and "loss 1.5" in r.getMessage() for r in caplog.records)


def test_progress_rates_read_well_and_never_as_zero():
    """Rates over twelve decades (fresh random draws) print as units/s or s/unit, whichever is >= 1,
    and read back within their rounding; no rate prints as 0.0."""
    import re

    from lqs_megatron.utils.progress import format_rate

    rng = np.random.default_rng()
    for per_s in 10.0 ** rng.uniform(-6, 6, size=400):
        text = format_rate(per_s, "step")
        assert not re.search(r"(^|\D)0\.0\b", text), text
        m = re.fullmatch(r"([\d,.]+) (steps/s|s/step)", text)
        assert m, text
        value = float(m.group(1).replace(",", ""))
        assert value >= 1.0, text
        back = value if m.group(2) == "steps/s" else 1.0 / value
        assert abs(back - per_s) / per_s < 0.06, (text, per_s)


def test_progress_log_line_has_done_total_rate_and_eta(caplog, monkeypatch):
    """18 of 20 steps (2 of them before a resume) in 80 s of fake clock: 5.0 s/step and 10 s to go,
    in the log line an annotation phase prints without a terminal (it printed ``(0.0/s)`` before)."""
    import logging

    import lqs_megatron.utils.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    p = Progress("backward sweep", unit="step", total=20, initial=2, log_every_s=60.0)
    with caplog.at_level(logging.INFO, logger="lqs_megatron.data"):
        for _ in range(16):
            clock[0] += 5.0
            p.update(1)
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["backward sweep: 14/20 steps, 5.0 s/step, ETA 0:30"], lines
    assert p.status() == "backward sweep: 18/20 steps, 5.0 s/step, ETA 0:10".split(": ", 1)[1]


def test_pretrain_writes_tensorboard_and_loss_png(tmp_path, tiny_data):
    pytest.importorskip("tensorboard")
    from lqs_megatron.training.config import PretrainConfig
    from lqs_megatron.training.pretrainer import Pretrainer

    cfg = PretrainConfig(
        model_config="tiny",
        tokenizer=tiny_data["tokenizer"],
        data=[tiny_data["train"]],
        out=str(tmp_path / "ck"),
        valid_data=tiny_data["valid"],
        eval_samples=4,
        eval_interval=2,
        max_length=16,
        global_batch_size=2,
        steps=4,
        lr=1e-3,
        save_interval=0,
        log_interval=2,
    )
    summary = Pretrainer(cfg, ParallelDims()).run()
    tb = tb_scalars(tmp_path / "ck" / "tb")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4] and [s for s, _ in tb["valid/valid_loss"]] == [2, 4]
    assert np.isclose(tb["train/loss"][-1][1], summary["loss"]) and "train/tokens_per_s" in tb
    assert (tmp_path / "ck" / "loss.png").read_bytes()[:8] == PNG


def test_train_scorer_writes_tensorboard_and_loss_png(tmp_path, tiny_tokenizer):
    pytest.importorskip("tensorboard")
    from lqs_megatron.scorer.config import PrepareScorerConfig, TrainScorerRun
    from lqs_megatron.scorer.data import prepare_scorer_data
    from lqs_megatron.scorer.train import TrainScorerConfig, train_scorer
    from tests.scorer.helpers import degraded_docs, write_dataset

    texts, scores = degraded_docs(60, seed=0)
    write_dataset(tmp_path / "proxy", tiny_tokenizer, texts)
    np.save(tmp_path / "s.npy", scores)
    prepare_scorer_data(PrepareScorerConfig(tmp_path / "proxy", tmp_path / "s.npy", tmp_path / "data"))
    cfg = TrainScorerConfig(epochs=2, lr=1e-3, warmup_steps=1, global_batch_size=8, max_length=32, log_interval=2)
    res = train_scorer(
        TrainScorerRun(tmp_path / "data", tmp_path / "ck", model_config="tiny", tokenizer=tiny_tokenizer), cfg
    )
    tb = tb_scalars(tmp_path / "ck" / "tb")
    assert res["steps"] == 12 and [s for s, _ in tb["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in tb["valid/valid_pearson"]] == [6, 12] and "train/epoch" in tb
    assert (tmp_path / "ck" / "loss.png").read_bytes()[:8] == PNG


def test_require_wandb_message(monkeypatch):
    from lqs_megatron.utils.progress import require_wandb

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(LQSError, match="pip install wandb"):
        require_wandb()
