"""One tokenizer identity from `lqs tokenize` through every dataset and model directory, checked where
data meets a model or another dataset (issue 24, serious 5); `--allow-tokenizer-mismatch` overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lqs_megatron.cli import main
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize
from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer, tokenizer_info
from tests.conftest import demo_texts
from tests.data.conftest import write_jsonl

FLAG = "--allow-tokenizer-mismatch"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model_with_tokenizer(path, tok_dir, vocab: int) -> str:
    """A tiny random HF Mistral of ``vocab`` ids with ``tok_dir``'s files saved beside it."""
    import transformers

    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer

    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    cfg = transformers.MistralConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.MistralForCausalLM(cfg).save_pretrained(path)
    load_tokenizer(tok_dir, require_eos=False).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer, bytelevel_tokenizer) -> dict:
    """Datasets of two tokenizers (A: sentencepiece 512, B: byte-level 700, ids of both below 700) and a
    model directory carrying A."""
    d = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng()
    texts = demo_texts()
    picks = rng.choice(len(texts), 24, replace=False)
    src = write_jsonl(d / "c.jsonl", [{"text": texts[i][:400]} for i in picks])
    for name, tok in (("a", tiny_tokenizer), ("a2", tiny_tokenizer), ("b", bytelevel_tokenizer)):
        tokenize(TokenizeConfig([src], "text", tok, str(d / name), workers=1, progress=False))
    np.save(d / "scores.npy", rng.standard_normal(24))
    return {
        "dir": d,
        "a": str(d / "a"),
        "a2": str(d / "a2"),
        "b": str(d / "b"),
        "tok_a": tiny_tokenizer,
        "tok_b": bytelevel_tokenizer,
        "model_a": _model_with_tokenizer(d / "model_a", tiny_tokenizer, 700),
        "fp_a": tokenizer_info(tiny_tokenizer)["fingerprint"],
        "fp_b": tokenizer_info(bytelevel_tokenizer)["fingerprint"],
    }


def model_tokenizer(path):
    from lqs_megatron.data.tokenizers.fingerprint import model_tokenizer

    return model_tokenizer(path)


def _lqs(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line_naming_both(err: str, side_a: str, side_b: str) -> None:
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert side_a in lines[0] and side_b in lines[0] and FLAG in lines[0], lines[0]


def test_views_and_merges_carry_the_identity(world, capsys):
    d = world["dir"]
    for argv in (
        ("sample-proxy", "--data", world["a"], "--num", 10, "--seed", 3, "--out", d / "proxy"),
        (
            "select",
            "--data",
            world["a"],
            "--scores",
            d / "scores.npy",
            "--method",
            "top-k",
            "--k",
            12,
            "--out",
            d / "sel",
        ),
        ("order", "--data", d / "sel", "--scores", d / "sel.scores.npy", "--method", "folding", "--out", d / "ord"),
        ("merge", "--data", world["a"], world["a2"], "--out", d / "merged"),
        ("sample-proxy", "--data", d / "merged", "--num", 5, "--seed", 1, "--out", d / "chain"),
    ):
        rc, err = _lqs(capsys, *argv)
        assert rc == 0, err
    for name in ("proxy", "sel", "ord", "merged", "chain"):
        stats = json.loads((d / f"{name}.stats.json").read_text())
        assert stats["tokenizer"]["fingerprint"] == world["fp_a"], name
        assert dataset_tokenizer(d / name)["fingerprint"] == world["fp_a"]
    assert json.loads((d / "proxy.stats.json").read_text())["source"] == world["a"]
    assert json.loads((d / "ord.stats.json").read_text())["source"] == str(d / "sel")


def test_merge_of_two_tokenizers_is_refused_or_recorded_as_mixed(world, capsys):
    d = world["dir"]
    rc, err = _lqs(capsys, "merge", "--data", world["a"], world["b"], "--out", d / "mix")
    assert rc == 1
    _one_line_naming_both(err, world["tok_a"], world["tok_b"])
    assert not (d / "mix.idx").exists() and not (d / "mix.stats.json").exists()
    rc, err = _lqs(capsys, "merge", "--data", world["a"], world["b"], "--out", d / "mix", FLAG)
    assert rc == 0, err
    recorded = json.loads((d / "mix.stats.json").read_text())["tokenizer"]
    assert recorded["fingerprint"] == f"mixed:{world['fp_a']}+{world['fp_b']}"
    # the mixed dataset matches no model: evaluating it needs the flag again
    rc, err = _lqs(
        capsys, "evaluate", "--model", world["model_a"], "--data", d / "mix", "--max-length", 16, "--device", "cpu"
    )
    assert rc == 1 and "mixed" in err and FLAG in err


@pytest.mark.parametrize("flag", ["--train", "--target", "--proxy"])
def test_annotate_refuses_data_of_another_tokenizer(world, capsys, flag):
    d = world["dir"]
    sets = {"--train": world["a"], "--target": world["a"], "--proxy": world["a"], flag: world["b"]}
    argv = [
        "annotate",
        "--model",
        world["model_a"],
        *[x for kv in sets.items() for x in kv],
        "--out",
        d / "ann",
        "--steps",
        2,
        "--interval",
        1,
        "--max-length",
        16,
        "--device",
        "cpu",
    ]
    rc, err = _lqs(capsys, *argv)
    assert rc == 1
    _one_line_naming_both(err, f"{flag} {world['b']}", f"--model {world['model_a']}")
    assert not (d / "ann").exists()


def test_evaluate_refuses_then_the_flag_overrides(world, capsys, caplog):
    argv = ["evaluate", "--model", world["model_a"], "--data", world["b"], "--max-length", 16, "--device", "cpu"]
    rc, err = _lqs(capsys, *argv)
    assert rc == 1
    _one_line_naming_both(err, world["tok_b"], world["model_a"])
    assert world["fp_a"] in err and world["fp_b"] in err
    caplog.clear()
    rc, err = _lqs(capsys, *argv, FLAG)
    assert rc == 0 and f"going on as {FLAG} asks" in caplog.text, err  # a warning, then the loss
    caplog.clear()
    rc, err = _lqs(
        capsys, "evaluate", "--model", world["model_a"], "--data", world["a"], "--max-length", 16, "--device", "cpu"
    )
    assert rc == 0 and "tokenized with" not in caplog.text, err


def test_data_without_a_recorded_identity_keeps_working(world, capsys, tmp_path):
    import shutil

    for ext in (".bin", ".idx"):
        shutil.copyfile(world["b"] + ext, tmp_path / f"old{ext}")  # written before identities: no stats
    rc, err = _lqs(
        capsys,
        "evaluate",
        "--model",
        world["model_a"],
        "--data",
        tmp_path / "old",
        "--max-length",
        16,
        "--device",
        "cpu",
    )
    assert rc == 0, err


_ONE_STEP = ["--max-length", 16, "--global-batch-size", 2, "--steps", 1, "--lr", "1e-3", "--device", "cpu"]
"""One pretraining step on the CPU (the flags every pretrain of these tests shares)."""


def test_pretrain_checks_and_its_checkpoints_and_export_carry_the_identity(world, capsys):
    d = world["dir"]
    rc, err = _lqs(
        capsys,
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        world["tok_b"],
        "--data",
        world["a"],
        "--out",
        d / "pt_bad",
        *_ONE_STEP,
    )
    assert rc == 1
    _one_line_naming_both(err, world["tok_a"], world["tok_b"])
    rc, err = _lqs(
        capsys, "pretrain", "--init-from", world["model_a"], "--data", world["b"], "--out", d / "pt_bad2", *_ONE_STEP
    )
    assert rc == 1
    _one_line_naming_both(err, world["tok_b"], world["model_a"])
    rc, err = _lqs(
        capsys, "pretrain", "--init-from", world["model_a"], "--data", world["a"], "--out", d / "pt", *_ONE_STEP
    )
    assert rc == 0, err
    assert model_tokenizer(d / "pt")["fingerprint"] == world["fp_a"]
    step = (d / "pt" / (d / "pt" / "latest").read_text().strip()) / "config.json"
    assert json.loads(step.read_text())["tokenizer"]["fingerprint"] == world["fp_a"]
    rc, err = _lqs(capsys, "export-hf", "--checkpoint", d / "pt", "--out", d / "hf")
    assert rc == 0, err
    assert json.loads((d / "hf" / "config.json").read_text())["lqs_tokenizer"]["fingerprint"] == world["fp_a"]
    # the exported model refuses the other tokenizer's data in turn
    rc, err = _lqs(capsys, "evaluate", "--model", d / "hf", "--data", world["b"], "--max-length", 16, "--device", "cpu")
    assert rc == 1 and world["fp_a"] in err and world["fp_b"] in err


def test_pretrain_refuses_an_online_target_of_another_tokenizer(world, capsys):
    d = world["dir"]
    rc, err = _lqs(
        capsys,
        "pretrain",
        "--init-from",
        world["model_a"],
        "--data",
        world["a"],
        "--online-select",
        "dot",
        "--target",
        world["b"],
        "--out",
        d / "pt_target",
        *_ONE_STEP,
    )
    assert rc == 1
    _one_line_naming_both(err, world["tok_b"], world["model_a"])
    assert "--target" in err


def test_a_model_trained_without_a_tokenizer_records_the_datas(world, capsys, tmp_path):
    """--init-from a model directory without tokenizer files: the checkpoint records the data's identity."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(f"{world['model_a']}/{f}", bare / f)
    assert model_tokenizer(bare) is None
    rc, err = _lqs(
        capsys,
        "pretrain",
        "--init-from",
        bare,
        "--data",
        world["b"],
        "--out",
        tmp_path / "pt",
        "--max-length",
        16,
        "--global-batch-size",
        2,
        "--steps",
        1,
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert model_tokenizer(tmp_path / "pt")["fingerprint"] == world["fp_b"]
