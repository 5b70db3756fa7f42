"""Length-bucketed prediction: scores for a list of sequences, with no compute spent on padding.

Used by ``lqs score`` (one shard at a time) and by ``train-scorer``'s validation, so both
see exactly the same tokens:

- a sequence becomes ``[BOS] + x`` (when the scorer has a BOS id) cut to ``max_length``;
- the requested sequences are sorted by length (descending, stable) and cut into batches
  that fill a **token budget**: ``rows * longest_row <= max_tokens`` (and
  ``rows <= max_batch_size``). Neighbours in a batch have nearly the same length, so the
  padding is a few percent at most, where dataset-order batches pad to the longest of a
  random handful;
- rows are right-padded; causal attention and pooling over real tokens make each score
  independent of its neighbours and of the padding (exactly in infinite precision; in
  float32 on the CPU the differences from batch composition are at the 1e-7 level, see
  ``docs/scorer.md``);
- the next batch is collated on a background thread while the model runs the current one,
  and scores stay on the device until the whole list is done (one copy back, no sync per
  batch).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

import numpy as np
import torch

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.model import Scorer, ScorerConfig
from lqs_megatron.training.step import autocast as amp_context  # the name ``autocast`` is predict's parameter


def default_max_tokens(device: torch.device) -> int:
    """Token budget of a batch: large on a GPU; small on the CPU, where a batch that fits the caches runs
    faster (4096 tokens ran 1.7x faster than 16384 for a d=256 model on the benchmark machine)."""
    return 32768 if device.type == "cuda" else 4096


def length_batches(lengths: np.ndarray, max_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Positions into ``lengths`` grouped into batches, longest first (see the module docstring)."""
    if max_tokens < 1 or max_batch_size < 1:
        raise LQSError(f"--max-tokens and --micro-batch-size must be >= 1 (got {max_tokens}, {max_batch_size})")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, i, n = [], 0, len(order)
    while i < n:
        longest = max(int(lengths[order[i]]), 1)
        rows = max(1, min(max_batch_size, max_tokens // longest))
        batches.append(order[i : i + rows])
        i += rows
    return batches


def collate(
    ds: IndexedDataset, indices: np.ndarray, cfg: ScorerConfig, pad_multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids [B, T] int64, lengths [B] int64)`` for dataset sequences ``indices``, right-padded.

    Raises :class:`LQSError` naming the sequence when an id is outside the scorer's vocabulary
    or a sequence has no token to read.
    """
    bos = cfg.bos_token_id
    eff = cfg.effective_lengths(ds.sequence_lengths[indices])
    t = int(eff.max())
    t = -(-t // pad_multiple) * pad_multiple
    ids = np.full((len(indices), t), cfg.pad_token_id, dtype=np.int64)
    start = 0 if bos is None else 1
    if bos is not None:
        ids[:, 0] = bos
    if eff.min() < 1:
        raise LQSError(f"sequence {int(indices[int(np.argmin(eff))])} is empty; the scorer has nothing to read")
    for row, (i, n) in enumerate(zip(indices, eff)):
        ids[row, start:n] = ds.get(int(i), 0, int(n) - start)
    if ids.max() >= cfg.vocab_size or ids.min() < 0:
        bad = np.flatnonzero(((ids >= cfg.vocab_size) | (ids < 0)).any(1))[0]
        row = ids[bad, : eff[bad]]
        tok = int(row[(row >= cfg.vocab_size) | (row < 0)][0])
        raise LQSError(
            f"sequence {int(indices[bad])} holds token id {tok}, outside the scorer's vocabulary of "
            f"{cfg.vocab_size}; the data was tokenized with another tokenizer (retokenize it for the scorer)"
        )
    return ids, eff


@torch.no_grad()
def predict(
    model: Scorer,
    cfg: ScorerConfig,
    ds: IndexedDataset,
    indices: np.ndarray,
    device: torch.device,
    max_tokens: int | None = None,
    max_batch_size: int = 512,
    pad_multiple: int = 1,
    on_batch: Callable[[int, int], None] | None = None,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Float32 scores of ``ds[indices]``, in the order of ``indices``.

    ``model`` must already sit on ``device`` in eval mode (and in its inference dtype).
    ``max_tokens``: token budget of a batch (None: :func:`default_max_tokens`).
    ``on_batch(sequences, tokens)`` is called after each batch is launched (progress bars).
    ``autocast``: run the model under ``torch.autocast`` with this dtype (None: as it is).
    """
    indices = np.asarray(indices, dtype=np.int64)
    out = torch.empty(len(indices), dtype=torch.float32, device=device)
    if not len(indices):
        return out.cpu().numpy()
    eff = cfg.effective_lengths(ds.sequence_lengths[indices])
    batches = length_batches(eff, max_tokens or default_max_tokens(device), max_batch_size)
    pin = device.type == "cuda"

    def load(b: np.ndarray):
        ids, lens = collate(ds, indices[b], cfg, pad_multiple)
        ids, lens, pos = torch.from_numpy(ids), torch.from_numpy(lens), torch.from_numpy(b)
        if pin:
            ids, lens, pos = ids.pin_memory(), lens.pin_memory(), pos.pin_memory()
        return ids, lens, pos

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(load, batches[0])
        for k in range(len(batches)):
            ids, lens, pos = nxt.result()
            if k + 1 < len(batches):
                nxt = pool.submit(load, batches[k + 1])
            ids, lens, pos = (x.to(device, non_blocking=True) for x in (ids, lens, pos))
            with amp_context(device, autocast):
                out[pos] = model(ids, lens)
            if on_batch is not None:
                on_batch(len(pos), int(eff[batches[k]].sum()))
    return out.cpu().numpy()
