"""`lqs pretrain` / `lqs export-hf` / `lqs evaluate` end to end through the real CLI on tiny data:
export = checkpoint = transformers, evaluate = transformers, exact resume, tp=2 under torchrun
= tp=1, --init-from, and the failure modes."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.training.conftest import write_tokens
from tests.utils import REPO, rel_err, run_lqs

ARGS = ["--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3"]
ARGS += ["--log-interval", "1", "--seed", "5"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny ops on a shared 2-core machine: spinning OpenMP threads cost 100x


def lqs(*args, check=True):
    return run_lqs(*args, check=check, env=ONE_THREAD)


def _pretrain(data, out, *extra, steps=6, check=True):
    return lqs(
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        data["tokenizer"],
        "--data",
        data["train"],
        "--steps",
        steps,
        "--out",
        out,
        *ARGS,
        *extra,
        check=check,
    )


def _losses(out) -> list[float]:
    recs = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at 3 and 6 and validation at the end."""
    out = tmp_path_factory.mktemp("run") / "ckpt"
    proc = _pretrain(tiny_data, out, "--save-interval", "3", "--valid-data", tiny_data["valid"], "--eval-samples", "6")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"out": str(out), "summary": summary, **tiny_data}


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    """The run's final checkpoint exported through `lqs export-hf`."""
    out = tmp_path_factory.mktemp("export") / "hf"
    lqs("export-hf", "--checkpoint", run["out"], "--out", out)
    return out


def test_checkpoint_layout(run):
    out = run["out"]
    assert open(os.path.join(out, "latest")).read().strip() == "step_00000006"
    step = os.path.join(out, "step_00000006")
    assert sorted(os.listdir(step)) == [
        "checksums.json",
        "config.json",
        "model-tp00-of-01.safetensors",
        "optimizer-tp00-of-01.pt",
        "rng-rank00000.pt",
        "tokenizer",
        "trainer.json",
    ]
    meta = json.load(open(os.path.join(step, "config.json")))
    assert meta["model"]["vocab_size"] == 512 and meta["tp"] == 1 and meta["padded_vocab_size"] == 512
    assert meta["model"]["eos_token_id"] == 3
    state = json.load(open(os.path.join(step, "trainer.json")))
    assert state["step"] == 6 and state["consumed_samples"] == 24
    losses = _losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0] and run["summary"]["valid_loss"] is not None
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    sums = json.load(open(os.path.join(step, "checksums.json")))["files"]
    files = {f"{os.path.relpath(d, step)}/{f}".removeprefix("./") for d, _, fs in os.walk(step) for f in fs}
    assert set(sums) == files - {"checksums.json"} and "tokenizer/tokenizer_config.json" in sums
    assert sums["config.json"]["size"] == os.path.getsize(os.path.join(step, "config.json"))
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000  # the loss curves, drawn at the end


def test_export_hf_loads_cleanly_and_matches_checkpoint(run, hf_dir, caplog):
    import transformers

    from lqs_megatron.models.loading import load_model

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    transformers.logging.enable_propagation()  # so caplog sees transformers' own warnings
    try:
        with caplog.at_level(logging.WARNING):
            hf, info = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    finally:
        transformers.logging.disable_propagation()
        transformers.logging.set_verbosity(level)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    noisy = [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]
    assert not [m for m in noisy if "missing" in m.lower() or "unexpected" in m.lower() or "newly" in m], noisy
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert len(tok) == 512 and tok.eos_token_id == 3
    ours = load_model(run["out"]).eval()
    ids = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert rel_err(hf.eval()(input_ids=ids).logits, ours.logits(ours(ids))) < 1e-5


def _transformers_loss(model_dir, prefix, L) -> tuple[float, int]:
    import transformers

    from lqs_megatron.data.datasets.indexed import IndexedDataset

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses, tokens = [], 0  # one forward per example: no padding at all in the reference
    with torch.no_grad():
        for x in IndexedDataset(prefix):
            x = torch.from_numpy(x[: L + 1].astype(np.int64))
            logits = hf(input_ids=x[None, :-1]).logits[0]
            losses.append(F.cross_entropy(logits.float(), x[1:]).item())
            tokens += len(x) - 1
    return float(np.mean(losses)), tokens


def test_evaluate_equals_transformers(run, hf_dir):
    from lqs_megatron.data.datasets.indexed import IndexedDataset
    from lqs_megatron.models.loading import load_model
    from lqs_megatron.training.evaluate import evaluate_dataset

    # documents shorter and longer than L + 1 (padding and cutting both happen)
    res = json.loads(
        lqs("evaluate", "--model", hf_dir, "--data", run["valid"], "--max-length", "48", "--batch-size", "3")
        .stdout.strip()
        .splitlines()[-1]
    )
    ref, tokens = _transformers_loss(hf_dir, run["valid"], 48)
    assert res["examples"] == len(IndexedDataset(run["valid"])) and res["tokens"] == tokens
    assert abs(res["loss"] - ref) / ref < 1e-5, (res, ref)
    ck = evaluate_dataset(load_model(run["out"]), run["valid"], 48, batch_size=5, progress=False)
    assert abs(ck["loss"] - ref) / ref < 1e-5 and ck["tokens"] == tokens


def test_eval_max_length_curve_is_what_lqs_evaluate_gives(run, tmp_path):
    """``--eval-max-length L``: each point of the validation curve is ``lqs evaluate --max-length L``'s number
    for the checkpoint of that step (``--eval-samples N``: its ``--limit N``), not the packed samples' loss."""
    out = tmp_path / "ckpt"
    _pretrain(run, out, "--save-interval", "2", "--valid-data", run["valid"], "--eval-interval", "2", steps=4)
    packed = {r["step"]: r["valid_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "valid_loss" in r}
    out2 = tmp_path / "ckpt2"
    curve = ("--valid-data", run["valid"], "--eval-interval", "2", "--eval-max-length", "48")
    _pretrain(run, out2, "--save-interval", "2", *curve, steps=4)
    recs = [r for r in map(json.loads, open(out2 / "metrics.jsonl")) if "valid_loss" in r]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        ck = out2 / f"step_{r['step']:08d}"
        res = json.loads(
            lqs("evaluate", "--model", ck, "--data", run["valid"], "--max-length", "48").stdout.strip().splitlines()[-1]
        )
        assert rel_err(r["valid_loss"], res["loss"]) < 1e-6, (r, res)
        assert rel_err(r["valid_loss"], packed[r["step"]]) > 1e-3  # another quantity than the packed samples'
    out3 = tmp_path / "ckpt3"
    _pretrain(run, out3, *curve, "--eval-samples", "5", steps=2)
    last = [r for r in map(json.loads, open(out3 / "metrics.jsonl")) if "valid_loss" in r][-1]
    ref = lqs("evaluate", "--model", out3, "--data", run["valid"], "--max-length", "48", "--limit", "5")
    assert rel_err(last["valid_loss"], json.loads(ref.stdout.strip().splitlines()[-1])["loss"]) < 1e-6


def test_resume_continues_exactly(run, tmp_path):
    out = tmp_path / "ckpt"
    extra = ("--save-interval", "3", "--valid-data", run["valid"], "--eval-samples", "6")
    first = _pretrain(run, out, *extra, "--stop-after", "5")  # killed after step 5: step 4-5 are lost
    assert json.loads(first.stdout.strip().splitlines()[-1])["stopped_early"]
    assert open(out / "latest").read().strip() == "step_00000003"
    refused = _pretrain(run, out, *extra, check=False)
    assert refused.returncode == 1 and "pass --resume" in refused.stderr
    _pretrain(run, out, *extra, "--resume")
    assert _losses(out) == _losses(run["out"])  # step for step, bit for bit (same machine and threads)
    bad = _pretrain(run, out, *extra, "--resume", "--global-batch-size", "8", check=False)
    assert bad.returncode == 1 and "--global-batch-size was 4, now 8" in bad.stderr


@pytest.mark.distributed
def test_tp2_under_torchrun_matches_tp1(run, tmp_path):
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
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        run["tokenizer"],
        "--data",
        run["train"],
        "--steps",
        "6",
        "--stop-after",
        "3",
        "--out",
        str(out),
        "--tp",
        "2",
        "--save-interval",
        "3",
        *ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = out / "step_00000003"
    assert json.load(open(step / "config.json"))["tp"] == 2
    assert sorted(p for p in os.listdir(step) if p.startswith("model")) == [
        "model-tp00-of-02.safetensors",
        "model-tp01-of-02.safetensors",
    ]
    np.testing.assert_allclose(_losses(out), _losses(run["out"])[:3], rtol=2e-5)
    # export merges the shards; loading merges them too; both equal the tp=1 run up to float noise
    import transformers

    from lqs_megatron.models.loading import load_model

    lqs("export-hf", "--checkpoint", out, "--out", tmp_path / "hf2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    merged = load_model(out).eval()
    ref = load_model(os.path.join(run["out"], "step_00000003")).eval()
    ids = torch.randint(0, 512, (2, 13))
    with torch.no_grad():
        assert rel_err(hf(input_ids=ids).logits, merged.logits(merged(ids))) < 1e-5
        assert rel_err(merged.logits(merged(ids)), ref.logits(ref(ids))) < 1e-4


def test_init_from_hf_starts_at_its_loss(run, hf_dir, tmp_path):
    import transformers

    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.training.data import SampleStream

    out = tmp_path / "ft"
    lqs("pretrain", "--init-from", hf_dir, "--data", run["train"], "--steps", "1", "--out", out, *ARGS)
    batch = SampleStream([run["train"]], 32, 4).batch(range(4))
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = hf(input_ids=batch[:, :-1]).logits
    ref = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:]).item()
    assert abs(_losses(out)[0] - ref) / ref < 1e-5
    assert len(load_tokenizer(str(out / "step_00000001" / "tokenizer"))) == 512  # tokenizer came from the HF dir


def test_bad_inputs_are_clear_errors(run, tmp_path):
    def fails(*args, match):
        proc = lqs(*args, check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert match in proc.stderr, proc.stderr[-2000:]
        return proc

    out = tmp_path / "out"
    fails(
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        run["tokenizer"],
        "--data",
        tmp_path / "missing",
        "--steps",
        "2",
        "--out",
        out,
        *ARGS,
        match="missing",
    )
    big = write_tokens(tmp_path / "big", [[5, 6, 7, 8] * 20, [1, 2, 900, 3] * 20])
    fails(
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        run["tokenizer"],
        "--data",
        big,
        "--steps",
        "2",
        "--out",
        out,
        *ARGS,
        match=f"dataset '{big}' holds token id 900",
    )
    assert not (out / "latest").exists()
    fails(
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        run["tokenizer"],
        "--data",
        run["train"],
        "--steps",
        "2",
        "--out",
        out,
        "--tp",
        "3",
        *ARGS,
        match="--tp 3 does not divide num_heads = 4",
    )
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    fails("evaluate", "--model", bert, "--data", run["valid"], "--max-length", "8", match="unsupported architecture")
    fails(
        "pretrain",
        "--init-from",
        bert,
        "--data",
        run["train"],
        "--steps",
        "2",
        "--out",
        out,
        *ARGS,
        match="unsupported architecture 'bert'",
    )


HF_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
HF_SHAPE_KEYS += ("tie_word_embeddings",)


def _from_config(model_config, data, out) -> list:
    """`lqs pretrain` arguments of a 2-step random-init run of ``model_config``."""
    flags = f"--model-config {model_config} --tokenizer {data['tokenizer']} --data {data['train']} --steps 2"
    return ["pretrain", *flags.split(), "--out", out, *ARGS]


@pytest.mark.parametrize("family", ["qwen25", "smollm2"])
def test_model_config_from_an_hf_config_json_trains_that_architecture_from_scratch(family, tiny_data, tmp_path):
    """--model-config HF_DIR (only a config.json, as a user's model directory gives it): the run trains that
    architecture (Qwen2 with q/k/v biases; a SmolLM2-style tied Llama) from a random init, with the
    tokenizer's vocabulary, and exports to the same transformers class and shape."""
    import transformers

    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer, vocab_size
    from tests.models.families import family_config

    rng = np.random.default_rng()
    theta = float(rng.choice([5e4, 2e5, 1e6]))
    hf_cfg = family_config(
        family,
        vocab=5000,
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=int(rng.integers(40, 80)),
        rope_theta=theta,
    )
    cfg_dir = tmp_path / "user_model"
    hf_cfg.save_pretrained(cfg_dir)
    assert not list(cfg_dir.glob("*.safetensors"))
    out = tmp_path / "ckpt"
    lqs(*_from_config(cfg_dir, tiny_data, out))
    lqs("export-hf", "--checkpoint", out, "--out", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == type(transformers.AutoModelForCausalLM.from_config(hf_cfg)).__name__
    c = hf.config
    for key in HF_SHAPE_KEYS:
        assert getattr(c, key) == getattr(hf_cfg, key), key
    theta_out = c.rope_theta if getattr(c, "rope_theta", None) else c.rope_parameters["rope_theta"]
    assert theta_out == theta
    assert c.vocab_size == vocab_size(load_tokenizer(tiny_data["tokenizer"])) != hf_cfg.vocab_size
    attn = hf.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (family == "qwen25")
    assert len(_losses(out)) == 2 and np.isfinite(_losses(out)).all()


def test_model_config_directory_without_config_json_is_one_clear_error(tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = lqs(*_from_config(tmp_path / "empty", tiny_data, tmp_path / "o"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "config.json" in proc.stderr.strip().splitlines()[-1] and not (tmp_path / "o").exists()
