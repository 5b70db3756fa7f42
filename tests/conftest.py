"""Shared fixtures: seeds, a tiny local tokenizer, GPU auto-skip, Triton's CPU interpreter."""

from __future__ import annotations

import os

# Triton kernels run under the interpreter when no GPU is present; the variable must be
# set before triton is imported anywhere.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    torch = None
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random

import numpy as np
import pytest


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Under pytest-xdist (the README's `-n auto`) the workers share the cores: each gets its share of
# torch's threads, and the `lqs` subprocesses it starts inherit the same OMP_NUM_THREADS.
# A thread count set by the caller (OMP_NUM_THREADS) is kept.
if os.environ.get("PYTEST_XDIST_WORKER") and torch is not None and not os.environ.get("OMP_NUM_THREADS"):
    _threads = max(1, _cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 8 (each imports torch; distributed tests spawn more)."""
    return max(1, min(_cores(), 8))


def _runs_triton_on_the_cpu(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("backend") == "triton" or "_triton_" in f"_{getattr(item, 'originalname', item.name)}_"


def pytest_collection_modifyitems(config, items):
    if torch is not None and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
    # the Triton kernels on the CPU run under the interpreter of whatever triton is installed
    triton_items = [i for i in items if "gpu" not in i.keywords and _runs_triton_on_the_cpu(i)]
    if triton_items:
        from tests.triton_probe import interpreter_problem

        problem = interpreter_problem()
        for item in triton_items if problem else ():
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(1234)
    np.random.seed(1234)
    if torch is not None:
        torch.manual_seed(1234)
    yield


def demo_texts() -> list[str]:
    """Real English text that ships with Python (the pydoc topics), one string per topic."""
    import pydoc_data.topics

    return [v for _, v in sorted(pydoc_data.topics.topics.items())]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> str:
    """A 512-piece sentencepiece BPE tokenizer directory, trained once per session."""
    from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(demo_texts(), out, vocab_size=512, num_threads=1)
    return str(out)
