"""The proxy sample: a seeded uniform sample of N corpus sequences, without replacement.

LQS annotates a small *proxy* set drawn uniformly from the corpus (DELT/PDS
``sample_proxy_data``), and the scorer learns from it. The output dataset holds the
sampled sequences **in corpus order** (the sampled indices sorted ascending: reading
the corpus front to back is the fast path for a memory-mapped file, and it matches
what DELT's tool writes), each sequence its own document. ``PREFIX.indices.npy``
(int64, ascending) maps output sequence ``j`` back to corpus sequence ``indices[j]``.

The sample is ``numpy.random.default_rng(seed).choice(n, num, replace=False)``: the
same seed, corpus size and numpy version give the same sample on every machine.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from lqs_megatron.data.datasets.subset import sidecar_path, write_subset_with_sidecars
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError

logger = logging.getLogger(__name__)


def sample_indices(n: int, num: int, seed: int) -> np.ndarray:
    """``num`` distinct indices drawn uniformly from ``[0, n)`` with ``seed``, sorted ascending (int64)."""
    if num < 0:
        raise LQSError(f"--num must be >= 0, got {num}")
    if num > n:
        raise LQSError(
            f"--num {num} is larger than the dataset ({n} sequences); a sample without replacement needs N <= {n}"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=num, replace=False)).astype(np.int64)


def sample_proxy(data_prefix: str | os.PathLike, num: int, seed: int, out_prefix: str | os.PathLike) -> dict:
    """Write the proxy sample of ``num`` sequences to ``out_prefix`` (+ ``out_prefix.indices.npy``).

    Returns ``{"prefix", "indices", "num_sequences", "num_tokens"}``.
    """
    ds = open_dataset(data_prefix)
    indices = sample_indices(len(ds), num, seed)
    tokens = write_subset_with_sidecars(ds, indices, out_prefix, {"indices": indices}, "sample-proxy")
    logger.info("proxy sample: %d of %d sequences, %d tokens -> %s", num, len(ds), tokens, out_prefix)
    return {
        "prefix": str(out_prefix),
        "indices": sidecar_path(out_prefix, "indices"),
        "num_sequences": int(num),
        "num_tokens": tokens,
    }
