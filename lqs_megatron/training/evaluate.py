"""``lqs evaluate``: the LQS loss of a model on an indexed dataset.

Each sequence is one example (cut to ``L + 1`` tokens, inputs ``x[:-1]``, labels ``x[1:]``;
:func:`lqs_megatron.data.datasets.batching.pad_examples`), its loss the mean token cross-entropy over
its real positions, and the reported ``loss`` the mean over examples (``docs/algorithm.md``).
Examples are split over the data-parallel ranks and batched by length (less padding); the
sums are all-reduced, so the result does not depend on the world size.
"""

from __future__ import annotations

import numpy as np
import torch

from lqs_megatron.data.datasets.batching import pad_examples
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.parallel.dims import ParallelDims, rank_slice
from lqs_megatron.training.data import check_token_ids
from lqs_megatron.training.loss import per_example_lm_loss
from lqs_megatron.training.step import autocast, autocast_dtype
from lqs_megatron.utils.progress import Progress


@torch.no_grad()
def evaluate_dataset(
    model: Decoder,
    prefix: str,
    max_length: int,
    dims: ParallelDims | None = None,
    batch_size: int = 16,
    precision: str = "auto",
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """``{"loss", "examples", "tokens"}``: mean per-example loss, example count, predicted positions."""
    dims = dims or ParallelDims()
    if max_length < 1 or batch_size < 1:
        raise LQSError(f"--max-length and --micro-batch-size must be >= 1 (got {max_length}, {batch_size})")
    ds = open_dataset(prefix)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise LQSError(f"dataset {prefix!r} holds no sequences")
    check_token_ids([prefix], model.config.vocab_size, dims)
    mine = np.arange(*rank_slice(n, dims.dp, dims.dp_rank))
    lengths = np.minimum(np.asarray(ds.sequence_lengths[:n])[mine], max_length + 1)
    mine = mine[np.argsort(-lengths, kind="stable")]  # longest first: batches of similar length
    amp = autocast_dtype(precision, dims.device)
    ctx = autocast(dims.device, amp)
    totals = torch.zeros(3, dtype=torch.float64, device=dims.device)  # loss sum, examples, tokens
    model.eval()
    bar = Progress("evaluate", progress and dims.is_main, unit="ex", total=n)
    with ctx:
        for s in range(0, len(mine), batch_size):
            idx = mine[s : s + batch_size]
            inp, lab, mask = pad_examples([ds[int(i)] for i in idx], max_length, 0, indices=[int(i) for i in idx])
            dev = dims.device
            losses = per_example_lm_loss(model, inp.to(dev), lab.to(dev), mask.to(dev))
            totals[0] += losses.double().sum()
            totals[1] += len(idx)
            totals[2] += float(mask.sum())
            bar.update(len(idx) * dims.dp, int(mask.sum()) * dims.dp)
    bar.close()
    dims.all_reduce(totals, group="dp")
    return {"loss": float(totals[0] / totals[1]), "examples": int(totals[1]), "tokens": int(totals[2])}
