"""`lqs annotate` end to end on a tiny random HF Mistral and tiny datasets, against the independent
float64 implementation of the contract in tests/lqs/reference.py; one process vs dp=2 / tp=2;
kill + resume; bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter
from tests.lqs.reference import normalized, reference_scores
from tests.utils import REPO, assert_close, run_lqs, spawn

VOCAB = 96
# T=5, K=2: scoring steps 4, 2, 0; checkpoints every ceil(sqrt(5)) = 3 steps, so the sweep recomputes
# two segments; 5 steps of 3 examples over 7 train sequences wrap around the stream twice.
ARGS = dict(steps=5, lr=0.5, global_batch_size=3, interval=2, max_length=12)


def _write(prefix, seqs):
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for s in seqs:
            w.add_document(list(s))


def _random_seqs(rng, n, lo=2, hi=20):
    return [rng.integers(0, VOCAB, rng.integers(lo, hi)) for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import transformers

    d = tmp_path_factory.mktemp("annotate")
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,
        rope_theta=1000.0,
    )
    model = transformers.MistralForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(d / "model")
    rng = np.random.default_rng(0)
    for name, n in (("train", 7), ("target", 4), ("proxy", 9)):
        _write(d / name, _random_seqs(rng, n))
    paths = {k: str(d / k) for k in ("model", "train", "target", "proxy")}
    ref = reference_scores(
        *paths.values(), ARGS["steps"], ARGS["lr"], ARGS["global_batch_size"], ARGS["interval"], ARGS["max_length"]
    )
    return d, paths, ref


def _cli_args(paths, out, method="lqs", **extra):
    args = [
        "annotate",
        "--model",
        paths["model"],
        "--train",
        paths["train"],
        "--target",
        paths["target"],
        "--proxy",
        paths["proxy"],
        "--steps",
        ARGS["steps"],
        "--lr",
        ARGS["lr"],
        "--global-batch-size",
        ARGS["global_batch_size"],
        "--interval",
        ARGS["interval"],
        "--max-length",
        ARGS["max_length"],
        "--method",
        method,
        "--out",
        out,
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [v])
    return args


@pytest.fixture(scope="module")
def cli_runs(setup):
    """The public CLI form, float32, both methods: {method: out dir}."""
    d, paths, _ = setup
    outs = {}
    for method in ("lqs", "pds"):
        out = d / f"out_{method}"
        run_lqs(*_cli_args(paths, out, method, micro_batch_size=2, proxy_batch_size=4))
        outs[method] = out
    return outs


@pytest.mark.parametrize("method", ["lqs", "pds"])
def test_cli_matches_contract_reference(setup, cli_runs, method):
    _, _, ref = setup
    out = cli_runs[method]
    raw, z = np.load(out / "raw_scores.npy"), np.load(out / "scores.npy")
    assert raw.dtype == np.float64 and raw.shape == (9,) and z.shape == (9,)
    assert np.corrcoef(raw, ref[method])[0, 1] > 0.99999
    assert np.abs(z - normalized(ref[method])).max() < 2e-3
    assert_close(raw, ref[method], rtol=1e-4, atol=1e-6 * np.abs(ref[method]).max(), name=f"{method} raw scores")
    rec = json.loads((out / "annotate.json").read_text())
    assert rec["method"] == method and rec["num_proxy"] == 9 and rec["scoring_steps"] == [4, 2, 0]
    assert [p["step"] for p in rec["target_loss_curve"]] == list(range(6))
    assert len(rec["train_loss_curve"]) == 5 and rec["checkpoint_interval"] == 3
    assert {"forward", "recompute", "scoring", "hvp", "target_grad"} <= set(rec["timings_s"])
    assert not (out / "trajectory").exists() and not (out / "state").exists()  # cleaned up after success
    # the same curves for the tools that read training runs: metrics.jsonl (+ TensorBoard when installed), loss.png
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    target = {m["step"]: m["annotate/target_loss"] for m in metrics if "annotate/target_loss" in m}
    train = {m["step"]: m["annotate/train_loss"] for m in metrics if "annotate/train_loss" in m}
    assert target == {p["step"]: p["loss"] for p in rec["target_loss_curve"]}
    assert train == {p["step"]: p["loss"] for p in rec["train_loss_curve"]}
    cos_key = "annotate/cos_" + sorted(rec["cos_stats"][0].keys() - {"step"})[0]
    assert sorted(m["step"] for m in metrics if cos_key in m) == [0, 2, 4]
    assert "annotate/time_forward_s" in metrics[-1] and (out / "loss.png").is_file()


def _annotate_in_process(rank, world, paths, out, precision, tp):
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate
    from lqs_megatron.parallel.dims import init_distributed

    cfg = AnnotateConfig(
        **paths, out=str(out), **ARGS, precision=precision, micro_batch_size=2, proxy_batch_size=3, tp=tp
    )
    annotate(cfg, init_distributed(tp=tp, device="cpu"))


@pytest.fixture(scope="module")
def single64(setup):
    d, paths, _ = setup
    _annotate_in_process(0, 1, paths, d / "single64", "fp64", 1)
    return np.load(d / "single64" / "raw_scores.npy")


def test_float64_equals_the_contract(setup, single64):
    """--precision fp64 agrees with the float64 reference far below float32 rounding."""
    _, _, ref = setup
    assert_close(single64, ref["lqs"], rtol=1e-11, atol=1e-14, name="float64 raw scores")


def test_tied_embeddings_float64_equals_the_contract(tmp_path):
    """A model whose head is its embedding (the statistics' cross term, the HVP of a shared weight)."""
    import transformers

    torch.manual_seed(1)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    transformers.MistralForCausalLM(cfg).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(1)
    for name, n in (("train", 5), ("target", 3), ("proxy", 6)):
        _write(tmp_path / name, _random_seqs(rng, n, 2, 12))
    paths = {k: str(tmp_path / k) for k in ("model", "train", "target", "proxy")}
    args = dict(steps=3, lr=0.5, global_batch_size=2, interval=1, max_length=8)
    ref = reference_scores(*paths.values(), *args.values())
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate
    from lqs_megatron.parallel.dims import ParallelDims

    annotate(AnnotateConfig(**paths, out=str(tmp_path / "out"), **args, precision="fp64"), ParallelDims())
    assert_close(np.load(tmp_path / "out" / "raw_scores.npy"), ref["lqs"], rtol=1e-11, atol=1e-14, name="tied")


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2], ids=["dp2", "tp2"])
def test_two_processes_equal_one(setup, single64, tp):
    d, paths, _ = setup
    out = d / f"two_tp{tp}"
    spawn(_annotate_in_process, 2, paths, out, "fp64", tp)
    assert_close(np.load(out / "raw_scores.npy"), single64, rtol=1e-10, atol=1e-14, name=f"tp={tp} x dp={2 // tp}")


@pytest.mark.distributed
def test_torchrun_dp2_cli(setup, cli_runs):
    """The CLI under torchrun (2 gloo ranks, float32) gives the one-process CLI scores."""
    d, paths, _ = setup
    out = d / "torchrun"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lqs_megatron",
        *map(str, _cli_args(paths, out, "lqs", micro_batch_size=2, proxy_batch_size=4, device="cpu")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((out / "annotate.json").read_text())
    assert rec["world"]["dp"] == 2
    assert_close(np.load(out / "raw_scores.npy"), np.load(cli_runs["lqs"] / "raw_scores.npy"), rtol=1e-5, atol=1e-9)


def test_kill_and_resume_gives_identical_scores(setup, cli_runs):
    d, paths, _ = setup
    out = d / "resumed"
    args = _cli_args(paths, out, "lqs", micro_batch_size=2, proxy_batch_size=4)
    # killed (SIGKILL) right after the 2nd scoring step: the state holds lambda_2, in the first segment
    killed = run_lqs(*args, check=False, env={"LQS_TEST_KILL_AFTER_SCORING_STEPS": "2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "raw_scores.npy").exists() and not (out / "scores.npy").exists()
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 2
    resumed = run_lqs(*args, "--resume")
    assert "resuming the backward sweep at lambda_2" in resumed.stderr
    for name in ("raw_scores.npy", "scores.npy"):
        assert np.array_equal(np.load(out / name), np.load(cli_runs["lqs"] / name)), name


def _bad(d, paths, name, mutate):
    """Copy of the inputs with one of them broken by ``mutate(dir, paths) -> paths``."""
    case = d / f"bad_{name}"
    case.mkdir(exist_ok=True)
    return mutate(case, dict(paths))


def _proxy_with(case, paths, seqs):
    _write(case / "proxy", seqs)
    return {**paths, "proxy": str(case / "proxy")}


def _target_with(case, paths, seqs):
    _write(case / "target", seqs)
    return {**paths, "target": str(case / "target")}


def _not_causal_lm(case, paths):
    shutil.copytree(paths["model"], case / "model", dirs_exist_ok=True)
    cfg = json.loads((case / "model" / "config.json").read_text())
    cfg["architectures"] = ["MistralForSequenceClassification"]
    (case / "model" / "config.json").write_text(json.dumps(cfg))
    return {**paths, "model": str(case / "model")}


BAD = {
    "proxy_id": (
        lambda c, p: _proxy_with(c, p, [[1, 2, 3], [4, 5], [7, VOCAB + 3, 1]]),
        {},
        r"--proxy .*sequence 2 has token id 99 at position 1, outside the model's vocabulary of 96",
    ),
    "target_id": (
        lambda c, p: _target_with(c, p, [[1, 2, 3], [VOCAB, 5]]),
        {},
        r"--target .*sequence 1 has token id 96",
    ),
    "empty_proxy": (lambda c, p: _proxy_with(c, p, []), {}, r"--proxy .*the proxy set is empty"),
    "short_proxy": (lambda c, p: _proxy_with(c, p, [[1, 2, 3], [4]]), {}, r"--proxy .*sequence 1 has 1 token"),
    "t_below_k": (lambda c, p: p, {"steps": 2, "interval": 3}, r"--steps 2 is smaller than --interval 3"),
    "not_causal_lm": (_not_causal_lm, {}, r"MistralForSequenceClassification is not a causal LM"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(setup, case):
    d, paths, _ = setup
    mutate, flags, message = BAD[case]
    bad_paths = _bad(d, paths, case, mutate)
    out = d / f"out_bad_{case}"
    args = _cli_args(bad_paths, out)
    for k, v in flags.items():
        args[args.index(f"--{k}") + 1] = v
    proc = run_lqs(*args, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("lqs annotate: error:") or "lqs annotate: error:" in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "raw_scores.npy").exists() and not (out / "scores.npy").exists()


def test_trajectory_and_sweep_take_keyword_arguments_only():
    """Ten and eleven settings of like types (ints, dtypes): named at every call, never by position."""
    import inspect

    from lqs_megatron.lqs.sweep import Sweep
    from lqs_megatron.lqs.trajectory import Trajectory

    for cls in (Trajectory, Sweep):
        params = list(inspect.signature(cls).parameters.values())
        assert len(params) >= 10 and all(p.kind is p.KEYWORD_ONLY for p in params), cls.__name__
