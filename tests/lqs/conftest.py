"""Fixtures of the annotation tests: a tiny random HF Mistral and a "language" fixture whose
replay is healthy at a small learning rate and diverges at a large one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter

LANG_VOCAB = 96


def write_dataset(prefix, seqs) -> str:
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for s in seqs:
            w.add_document(list(s))
    return str(prefix)


def tiny_mistral(path, vocab: int = LANG_VOCAB, seed: int = 0) -> str:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.MistralConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,
        rope_theta=1000.0,
    )
    transformers.MistralForCausalLM(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def lang_fixture(tmp_path_factory) -> dict:
    """``{model, train, target, proxy}``: the target is 6 random sequences over tokens 0..23 and the
    train stream is the target itself (a batch of 6 is then exactly the target set, so plain SGD
    descends ``L_tgt`` at a small rate and overshoots at a large one); the proxy set is 5 sequences
    of the target's tokens followed by 5 over tokens 48..95."""
    d = tmp_path_factory.mktemp("lang")
    rng = np.random.default_rng(0)

    def seqs(n, lo, hi):
        return [rng.integers(lo, hi, rng.integers(6, 14)) for _ in range(n)]

    target = seqs(6, 0, 24)
    proxy = seqs(5, 0, 24) + seqs(5, 48, 96)
    return {
        "model": tiny_mistral(d / "model"),
        "train": write_dataset(d / "train", target),
        "target": write_dataset(d / "target", target),
        "proxy": write_dataset(d / "proxy", proxy),
    }
