"""The three example sets of an annotation (train stream, target set, proxy set), validated.

An example is a sequence cut to its first ``L + 1`` tokens (``data/datasets/batching.py``). Each set
is checked once, up front, on exactly the sequences the run will use: every used sequence
has at least 2 tokens and every used token id is below the model's vocabulary; the error
names the dataset (``--train``/``--target``/``--proxy``), the sequence and the id.

Batches are plans of example indices split over data-parallel ranks and cut into
micro-batches; :func:`weighted_micro_batches` gives every micro-batch the weight that makes
the sum over all ranks and micro-batches the mean over the whole set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lqs_megatron.data.datasets.batching import pad_examples
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError


@dataclass
class Batch:
    """One padded micro-batch: ``[B, T]`` tensors and the indices of its examples in their set."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    indices: np.ndarray

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.loss_mask.to(device, non_blocking=True),
            self.indices,
        )

    def __len__(self) -> int:
        return len(self.indices)


class ExampleSet:
    """Sequences of one indexed dataset as LQS examples (``flag`` names the set in errors)."""

    def __init__(self, prefix: str, flag: str, max_length: int, limit: int | None = None):
        self.flag = flag
        self.ds = open_dataset(prefix)
        self.max_length = max_length
        self.size = len(self.ds) if limit is None else min(limit, len(self.ds))

    def __len__(self) -> int:
        return self.size

    def lengths(self) -> np.ndarray:
        """Example lengths in tokens (inputs), i.e. ``min(len, L + 1) - 1``, of the first ``size`` sequences."""
        return np.minimum(self.ds.sequence_lengths[: self.size].astype(np.int64), self.max_length + 1) - 1

    def validate(self, vocab_size: int, used: int | None = None) -> None:
        """Check the first ``used`` sequences (default: all); raise :class:`LQSError` naming the first bad one."""
        n = self.size if used is None else min(used, self.size)
        if n == 0:
            raise LQSError(f"{self.flag} {self.ds.prefix}: no sequences to use")
        short = np.flatnonzero(self.ds.sequence_lengths[:n] < 2)
        if short.size:
            i = int(short[0])
            raise LQSError(
                f"{self.flag} {self.ds.prefix}: sequence {i} has {int(self.ds.sequence_lengths[i])} token(s); "
                f"an example needs at least 2 (input and label)"
            )
        lo, hi = self._token_range(n)
        if lo >= 0 and hi < vocab_size:
            return  # fast path: no id in the used region of the file reaches the vocabulary
        cut = self.max_length + 1
        for i in range(n):
            seq = self.ds.get(i, 0, cut)
            bad = np.flatnonzero((seq >= vocab_size) | (seq < 0))
            if bad.size:
                p = int(bad[0])
                raise LQSError(
                    f"{self.flag} {self.ds.prefix}: sequence {i} has token id {int(seq[p])} at position {p}, "
                    f"outside the model's vocabulary of {vocab_size}"
                )

    def _token_range(self, n: int) -> tuple[int, int]:
        """Smallest and largest id stored in sequences ``[0, n)`` (whole sequences: a superset of the used tokens)."""
        pointers = self.ds.sequence_pointers[:n].astype(np.int64)  # a view's lead anywhere into its source
        lo = int(pointers.min())
        hi = int((pointers + self.ds.sequence_lengths[:n].astype(np.int64) * self.ds.dtype.itemsize).max())
        tokens = np.memmap(
            self.ds.data_path,
            dtype=self.ds.dtype,
            mode="r",
            offset=lo,
            shape=((hi - lo) // self.ds.dtype.itemsize,),
        )
        return (int(tokens.min()), int(tokens.max())) if tokens.size else (0, -1)

    def batch(self, indices: np.ndarray) -> Batch:
        seqs = [self.ds.get(int(i), 0, self.max_length + 1) for i in indices]
        ids, labels, mask = pad_examples(seqs, self.max_length, 0, indices=[int(i) for i in indices])
        return Batch(ids, labels, mask, np.asarray(indices, dtype=np.int64))


def train_indices(step: int, batch_size: int, num_train: int) -> np.ndarray:
    """Examples of batch ``b_step``: ``j mod N_train`` for ``j`` in ``[step*B, (step+1)*B)`` (stored order)."""
    return np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64) % num_train


def micro_batches(indices: np.ndarray, lengths: np.ndarray | None, size: int) -> list[np.ndarray]:
    """Cut ``indices`` into micro-batches of at most ``size``; sorted by length first when ``lengths`` are
    given (less padding; every statistic here is a sum over examples, so the grouping changes no maths)."""
    if len(indices) == 0:
        return []
    if lengths is not None:
        indices = indices[np.argsort(lengths[indices], kind="stable")]
    return [indices[s : s + size] for s in range(0, len(indices), size)]


def weighted_micro_batches(
    examples: ExampleSet, indices: np.ndarray, total: int, size: int, device: torch.device, sort: bool = True
) -> Iterator[tuple[Batch, float]]:
    """``(batch, 1 / total)`` for this rank's micro-batches of ``indices`` (``total``: examples over all ranks)."""
    lengths = examples.lengths() if sort else None
    for mb in micro_batches(indices, lengths, size):
        yield examples.batch(mb).to(device), 1.0 / total
