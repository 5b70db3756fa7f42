"""Tiny tokenized corpora for the training tests (real text through the session's tiny tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import demo_texts


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny ops of these tests crawl when OpenMP threads spin on a shared machine,
    and the golden loss curve is defined with one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tokens(prefix, docs, dtype=np.uint16) -> str:
    from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter

    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(np.asarray(d))
    return str(prefix)


@pytest.fixture(scope="session")
def tiny_data(tiny_tokenizer, tmp_path_factory) -> dict:
    """``{"tokenizer", "train", "valid"}``: 60 / 20 documents of the demo texts, EOS-terminated."""
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer)
    texts = demo_texts()
    docs = [tok(t).input_ids + [tok.eos_token_id] for t in texts[:80]]
    d = tmp_path_factory.mktemp("tiny_data")
    return {
        "tokenizer": tiny_tokenizer,
        "train": write_tokens(d / "train", docs[:60]),
        "valid": write_tokens(d / "valid", docs[60:80]),
    }
