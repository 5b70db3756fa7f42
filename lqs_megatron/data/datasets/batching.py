"""Examples and batches as the LQS contract defines them (``docs/algorithm.md``).

An example is one sequence ``x`` cut to its first ``L + 1`` tokens; inputs are
``x[:-1]``, labels ``x[1:]``; real positions have loss mask 1, padding 0. Used by
``lqs evaluate``, ``lqs annotate`` and the scorer alike, so the definition lives once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lqs_megatron.errors import LQSError


def pad_examples(
    seqs: Sequence[np.ndarray],
    max_length: int,
    pad_id: int = 0,
    indices: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad examples into ``(input_ids, labels, loss_mask)``, each ``[B, T]``.

    ``T`` is the longest ``min(len(x), L + 1) - 1`` in the batch (no wasted columns).
    Labels at padding positions are ``pad_id`` (masked out by ``loss_mask``, never -100,
    so kernels can gather them safely). A sequence of fewer than 2 tokens is an
    :class:`LQSError` naming its index (``indices[k]`` when given, else ``k``).
    """
    if not len(seqs):
        raise LQSError("empty batch")
    cut = [np.asarray(s[: max_length + 1], dtype=np.int64) for s in seqs]
    for k, c in enumerate(cut):
        if len(c) < 2:
            who = indices[k] if indices is not None else k
            raise LQSError(f"sequence {who} has {len(c)} token(s); an example needs at least 2 (input and label)")
    t = max(len(c) for c in cut) - 1
    b = len(cut)
    inp = np.full((b, t), pad_id, dtype=np.int64)
    lab = np.full((b, t), pad_id, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.float32)
    for k, c in enumerate(cut):
        n = len(c) - 1
        inp[k, :n] = c[:-1]
        lab[k, :n] = c[1:]
        mask[k, :n] = 1.0
    return torch.from_numpy(inp), torch.from_numpy(lab), torch.from_numpy(mask)
