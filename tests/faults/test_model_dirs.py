"""Damaged Hugging Face model directories (issue 24): a missing shard, a truncated safetensors file, a
config.json that does not match its weights, a config.json that is not JSON. Every command that loads
one (evaluate, annotate, pretrain --init-from, train-scorer --base; models/hf.py) exits 1 with one line naming the
file and what is wrong, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.lqs.conftest import tiny_mistral, write_dataset
from tests.utils import run_lqs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A sharded tiny Mistral (index + several safetensors files), one single-file one, and a dataset."""
    import transformers

    d = tmp_path_factory.mktemp("model_dirs")
    rng = np.random.default_rng()  # fresh entropy: the faults must not depend on particular weights
    single = tiny_mistral(d / "single", seed=int(rng.integers(0, 2**31)))
    model = transformers.AutoModelForCausalLM.from_pretrained(single)
    model.save_pretrained(d / "sharded", max_shard_size="40KB")
    assert (d / "sharded" / "model.safetensors.index.json").is_file()
    seqs = [rng.integers(0, 96, rng.integers(6, 14)) for _ in range(8)]
    return {"single": Path(single), "sharded": d / "sharded", "data": write_dataset(d / "data", seqs)}


def missing_shard(good, dst: Path) -> tuple[Path, str]:
    shutil.copytree(good["sharded"], dst)
    weight_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[-1]
    (dst / shard).unlink()
    return dst, f"{dst / shard}: missing; model.safetensors.index.json places"


def truncated(good, dst: Path) -> tuple[Path, str]:
    shutil.copytree(good["single"], dst)
    f = dst / "model.safetensors"
    raw = f.read_bytes()
    keep = int(np.random.default_rng().integers(len(raw) // 4, len(raw) - 1))
    f.write_bytes(raw[:keep])
    return dst, f"{f}: cannot read the weights"


def wider_config(good, dst: Path) -> tuple[Path, str]:
    shutil.copytree(good["single"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, f"{dst}/config.json does not match the weights: "


def bigger_vocab(good, dst: Path) -> tuple[Path, str]:
    shutil.copytree(good["single"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(vocab_size=200)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, f"{dst}: config.json does not match the weights: model.embed_tokens.weight has 96 rows, fewer"


def broken_json(good, dst: Path) -> tuple[Path, str]:
    shutil.copytree(good["single"], dst)
    text = (dst / "config.json").read_text()
    (dst / "config.json").write_text(text[: len(text) // 2])
    return dst, f"{dst / 'config.json'}: not valid JSON"


FAULTS = [missing_shard, truncated, wider_config, bigger_vocab, broken_json]


def error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_evaluate_names_the_damaged_file(good, tmp_path, fault):
    model, expected = fault(good, tmp_path / "model")
    proc = run_lqs(
        "evaluate", "--model", model, "--data", good["data"], "--max-length", 16, "--device", "cpu", check=False
    )
    assert expected in error_line(proc)


def test_the_intact_directories_load(good):
    for name in ("single", "sharded"):
        proc = run_lqs(
            "evaluate",
            "--model",
            good[name],
            "--data",
            good["data"],
            "--max-length",
            16,
            "--device",
            "cpu",
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_annotate_names_the_missing_shard(good, tmp_path):
    model, expected = missing_shard(good, tmp_path / "model")
    data = good["data"]
    proc = run_lqs(
        "annotate",
        "--model",
        model,
        "--train",
        data,
        "--target",
        data,
        "--proxy",
        data,
        "--out",
        tmp_path / "out",
        "--steps",
        2,
        "--interval",
        1,
        "--global-batch-size",
        2,
        "--max-length",
        16,
        "--device",
        "cpu",
        check=False,
    )
    assert expected in error_line(proc)


def test_pretrain_init_from_names_the_truncated_file(good, tmp_path):
    model, expected = truncated(good, tmp_path / "model")
    proc = run_lqs(
        "pretrain",
        "--init-from",
        model,
        "--data",
        good["data"],
        "--max-length",
        8,
        "--global-batch-size",
        2,
        "--steps",
        2,
        "--lr",
        "1e-3",
        "--out",
        tmp_path / "ck",
        "--no-tensorboard",
        "--device",
        "cpu",
        check=False,
    )
    assert expected in error_line(proc)
    assert not (tmp_path / "ck" / "latest").exists()


def test_load_model_names_the_mismatched_config(good, tmp_path):
    from lqs_megatron.errors import LQSError
    from lqs_megatron.models.loading import load_model

    model, expected = wider_config(good, tmp_path / "model")
    with pytest.raises(LQSError) as e:
        load_model(model)
    assert expected in str(e.value) and "the config implies" in str(e.value)


def test_scorer_base_names_the_broken_config(good, tmp_path):
    from lqs_megatron.errors import LQSError
    from lqs_megatron.scorer.model import build_scorer

    model, expected = broken_json(good, tmp_path / "model")
    with pytest.raises(LQSError) as e:
        build_scorer(str(model), None, None, 16, 0, True)
    assert expected in str(e.value)
