"""`lqs annotate` on every supported model family (tests/models/families.py: Llama-3.2 style with llama3
rope scaling, SmolLM2, Qwen2.5 with q/k/v biases, Mistral with a window shorter than the sequences, Llama
with attention/MLP biases) against the independent float64 contract reference of tests/lqs/reference.py,
whose own forward is first checked against transformers."""

import numpy as np
import pytest
import torch

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter
from tests.lqs.reference import load_hf_params, logits, normalized, reference_scores
from tests.models.families import FAMILIES, padded_batch, save_family
from tests.utils import assert_close, rel_err, spawn

VOCAB = 61
ARGS = dict(steps=3, lr=0.5, global_batch_size=2, interval=1, max_length=11)


def _write(prefix, seqs):
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for s in seqs:
            w.add_document(list(s))


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_forward_is_the_transformers_model(tmp_path, family):
    """The reference's plain-torch forward (float64) gives transformers' logits (float32) per sequence."""
    hf = save_family(family, tmp_path / "m", vocab=VOCAB)
    params, cfg = load_hf_params(tmp_path / "m")
    ids, mask = padded_batch(VOCAB, lengths=(13, 9))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    for b, n in enumerate(mask.sum(1).tolist()):
        assert rel_err(logits(params, cfg, ids[b, :n]), ref[b, :n]) < 1e-5, (family, b)


def _inputs(root, family) -> dict:
    save_family(family, root / "model", vocab=VOCAB, seed=1)
    rng = np.random.default_rng(2)
    for name, n in (("train", 4), ("target", 2), ("proxy", 5)):  # lengths up to 13: past the window of 4
        _write(root / name, [rng.integers(0, VOCAB, rng.integers(6, 14)) for _ in range(n)])
    return {k: str(root / k) for k in ("model", "train", "target", "proxy")}


@pytest.mark.parametrize("family", FAMILIES)
def test_annotate_equals_the_contract(tmp_path, family, capsys):
    from lqs_megatron.cli import main
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate
    from lqs_megatron.parallel.dims import ParallelDims

    paths = _inputs(tmp_path, family)
    ref = reference_scores(*paths.values(), *ARGS.values())["lqs"]
    assert np.ptp(ref) > 0

    annotate(AnnotateConfig(**paths, out=str(tmp_path / "f64"), **ARGS, precision="fp64"), ParallelDims())
    raw64 = np.load(tmp_path / "f64" / "raw_scores.npy")
    assert_close(raw64, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max(), name=f"{family} float64 raw scores")

    argv = ["annotate", *[f"--{k}={v}" for k, v in paths.items()], "--out", str(tmp_path / "cli"), "--device", "cpu"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    z = np.load(tmp_path / "cli" / "scores.npy")  # the CLI's default float32
    assert np.abs(z - normalized(ref)).max() < 2e-3


def _annotate_tp2(rank, world, runs):
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=2, device="cpu")
    for paths, out in runs:
        annotate(AnnotateConfig(**paths, out=out, **ARGS, precision="fp64", tp=2), dims)


@pytest.mark.slow
@pytest.mark.distributed
def test_annotate_tp2_equals_one_process(tmp_path):
    """tp=2 annotation (statistics, HVPs and replay through sharded biases and the window) equals one process."""
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate
    from lqs_megatron.parallel.dims import ParallelDims

    runs = []
    for family in FAMILIES:
        paths = _inputs(tmp_path / family, family)
        annotate(AnnotateConfig(**paths, out=str(tmp_path / family / "one"), **ARGS, precision="fp64"), ParallelDims())
        runs.append((paths, str(tmp_path / family / "tp2")))
    spawn(_annotate_tp2, 2, runs)
    for family in FAMILIES:
        one, two = (np.load(tmp_path / family / d / "raw_scores.npy") for d in ("one", "tp2"))
        assert_close(two, one, rtol=1e-10, atol=1e-13 * np.abs(one).max(), name=f"{family} tp=2")
