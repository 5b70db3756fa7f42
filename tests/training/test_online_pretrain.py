"""``lqs pretrain --online-select``: records, the per-source report, kill + resume against an uninterrupted
run (the cached target gradient comes back from the checkpoint), dp2 and tp2 (gloo) against one process,
and the settings' errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.config import PretrainConfig
from tests.utils import run_lqs, spawn

STEPS = 4


def _cfg(data: dict, out, **kw) -> PretrainConfig:
    base = dict(model_config="tiny", tokenizer=data["tokenizer"], data=[data["train"]], max_length=16, steps=STEPS)
    base.update(global_batch_size=4, micro_batch_size=2, make_vocab_size_divisible_by=3, lr=3e-3, seed=5)
    base.update(out=str(out), save_interval=2, log_interval=1, tensorboard=False, device="cpu")
    base.update(online_select="dot", target=data["valid"], candidates_per_pick=2, target_refresh=3)
    base.update(target_batch_size=4)
    return PretrainConfig(**{**base, **kw})


def _run(cfg: PretrainConfig) -> dict:
    from lqs_megatron.training.pretrainer import pretrain

    return pretrain(cfg, ParallelDims())


def _worker(rank: int, world: int, cfg: PretrainConfig) -> None:
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.training.pretrainer import pretrain

    torch.set_num_threads(1)
    pretrain(cfg, init_distributed(tp=cfg.tp, device="cpu"))


def _records(out) -> list[dict]:
    return [json.loads(x) for x in open(out / "online_selection.jsonl")]


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in open(out / "metrics.jsonl") if '"loss"' in x]


def _weights(out) -> dict:
    step = open(out / "latest").read().strip()
    return load_file(str(out / step / "model-tp00-of-01.safetensors"))


@pytest.fixture
def sourced(tiny_data, tmp_path):
    """The training set again, with a ``source`` sidecar (every third document from "b")."""
    from lqs_megatron.data.datasets.indexed import IndexedDataset
    from lqs_megatron.data.datasets.meta import write_meta

    prefix = tmp_path / "data" / "train"
    prefix.parent.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(tiny_data["train"] + ext, str(prefix) + ext)
    n = len(IndexedDataset(str(prefix)))
    write_meta(str(prefix), [{"source": "b" if i % 3 == 0 else "a"} for i in range(n)])
    return {**tiny_data, "train": str(prefix)}


def test_records_metrics_and_source_report(sourced, tmp_path):
    out = tmp_path / "run"
    res = _run(_cfg(sourced, out, online_select="greedy", target_refresh=1))
    assert res["step"] == STEPS
    recs = _records(out)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    for t, r in enumerate(recs):
        assert r["candidates"] == list(range(8 * t, 8 * t + 8))  # c x B stream samples of step t
        assert len(r["kept"]) == 4 and set(r["kept"]) <= set(r["candidates"])
        assert r["score_max"] >= r["kept_score_mean"] >= r["score_min"] and r["target_refreshed"]
    m = _metrics(out)
    assert all(k in m[0] for k in ("candidate_s", "select_s", "update_s", "target_s", "kept_score_mean"))
    rep = json.loads((out / "online_selection_sources.json").read_text())
    total = sum(r["kept"] for r in rep["sources"].values())
    assert total == 4 * STEPS and set(rep["sources"]) <= {"a", "b"}
    assert sum(r["candidates"] for r in rep["sources"].values()) == 8 * STEPS


def test_data_and_target_as_views(sourced, tmp_path):
    """A view (``lqs select --view``) works as --data, with its source's per-source report, and as --target."""
    import numpy as np

    from lqs_megatron.data.datasets.indexed import IndexedDataset
    from lqs_megatron.data.datasets.view import write_view

    n = len(IndexedDataset(sourced["train"]))
    rev = tmp_path / "views" / "train"
    rev.parent.mkdir()
    write_view(sourced["train"], np.arange(n)[::-1].copy(), str(rev), np.linspace(0.0, 1.0, n), "test")
    tgt = tmp_path / "views" / "target"
    m = len(IndexedDataset(sourced["valid"]))
    write_view(sourced["valid"], np.arange(m), str(tgt), None, "test")
    out = tmp_path / "run"
    res = _run(_cfg({**sourced, "train": str(rev)}, out, target=str(tgt), steps=2, save_interval=0))
    assert res["step"] == 2 and len(_records(out)) == 2
    rep = json.loads((out / "online_selection_sources.json").read_text())
    assert sum(r["kept"] for r in rep["sources"].values()) == 4 * 2 and set(rep["sources"]) <= {"a", "b"}


def test_dot_keeps_the_highest_scores_and_differs_from_plain(tiny_data, tmp_path):
    out = tmp_path / "run"
    _run(_cfg(tiny_data, out, steps=2, save_interval=0))
    recs = _records(out)
    assert any(r["kept"] != r["candidates"][:4] for r in recs)  # the selection is not the stream's order


def test_kill_and_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_cfg(tiny_data, whole, online_select="boltzmann"))
    # killed after step 3: the checkpoint of step 2 is the latest, step 3 is lost; the target gradient of
    # step 0 (refresh every 3) is still in use at step 2 and must come back from the checkpoint
    first = _run(_cfg(tiny_data, killed, online_select="boltzmann", stop_after=3))
    assert first["stopped_early"]
    assert (killed / "step_00000002" / "online-tp00-of-01.pt").is_file()
    _run(_cfg(tiny_data, killed, online_select="boltzmann", resume=True))
    assert _records(killed) == _records(whole)
    assert [r["loss"] for r in _metrics(killed)] == [r["loss"] for r in _metrics(whole)]
    a, b = _weights(killed), _weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resume_refuses_to_switch_or_change_the_selection(tiny_data, tmp_path):
    plain, online = tmp_path / "plain", tmp_path / "online"
    _run(_cfg(tiny_data, plain, online_select=None, target=None, steps=2, stop_after=1, save_interval=1))
    with pytest.raises(LQSError, match="--online-select was None, now 'dot'"):
        _run(_cfg(tiny_data, plain, steps=2, resume=True))
    _run(_cfg(tiny_data, online, steps=2, stop_after=1, save_interval=1))
    with pytest.raises(LQSError, match="--online-select was 'dot', now None"):
        _run(_cfg(tiny_data, online, online_select=None, target=None, steps=2, resume=True))
    with pytest.raises(LQSError, match="--candidates-per-pick was 2, now 3"):
        _run(_cfg(tiny_data, online, candidates_per_pick=3, steps=2, resume=True))


def _compare(one, many, rtol):
    ra, rb = _records(one), _records(many)
    assert [r["kept"] for r in ra] == [r["kept"] for r in rb]
    la = np.array([r["loss"] for r in _metrics(one)])
    lb = np.array([r["loss"] for r in _metrics(many)])
    assert np.abs(la - lb).max() <= rtol * np.abs(la).max(), (la, lb)
    sa = np.array([r["score_mean"] for r in ra])
    sb = np.array([r["score_mean"] for r in rb])
    assert np.abs(sa - sb).max() <= 1e-3 * np.abs(sa).max(), (sa, sb)


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2], ids=["dp2", "tp2"])
def test_two_processes_equal_one(tiny_data, tmp_path, tp):
    """dp2 (``dot``: the selection is global) and tp2 (``greedy``: tp shards add up) against one process."""
    method = "dot" if tp == 1 else "greedy"
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_cfg(tiny_data, one, online_select=method, steps=3, save_interval=0))
    zero = tp == 1  # dp2 with the distributed optimizer (ZeRO-1): the same updates as plain AdamW
    cfg = _cfg(tiny_data, two, online_select=method, steps=3, save_interval=0, tp=tp, distributed_optimizer=zero)
    spawn(_worker, 2, cfg)
    _compare(one, two, rtol=1e-4)


def test_cli_refuses_a_missing_or_unusable_target(tiny_data, tmp_path):
    from tests.training.conftest import write_tokens

    args = ["pretrain", "--model-config", "tiny", "--tokenizer", tiny_data["tokenizer"], "--data", tiny_data["train"]]
    args += ["--max-length", "16", "--global-batch-size", "4", "--steps", "2", "--lr", "1e-3", "--device", "cpu"]
    args += ["--online-select", "dot", "--no-tensorboard"]
    env = {"OMP_NUM_THREADS": "1"}
    missing = run_lqs(*args, "--out", tmp_path / "a", "--target", tmp_path / "nope", check=False, env=env)
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    short = write_tokens(tmp_path / "short", [[5, 6, 7], [9]])  # sequence 1: one token, no label
    bad = run_lqs(*args, "--out", tmp_path / "b", "--target", short, check=False, env=env)
    assert bad.returncode == 1 and "sequence 1 has 1 token(s)" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b" / "latest").exists()


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(target=None), "needs --target"),
        (dict(online_select=None), "--target is used by --online-select"),
        (dict(candidates_per_pick=0), "--candidates-per-pick must be >= 1"),
        (dict(target_refresh=0), "--target-refresh must be >= 1"),
        (dict(select_temperature=0.0), "--select-temperature must be > 0"),
        (dict(online_select="best"), "--online-select must be one of dot, greedy, boltzmann"),
    ],
)
def test_settings_errors(tiny_data, tmp_path, kw, msg):
    with pytest.raises(LQSError, match=msg):
        _cfg(tiny_data, tmp_path / "x", **kw)
