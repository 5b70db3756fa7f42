"""The pretraining sample stream: packed fixed-length samples of one or several indexed datasets.

- One dataset: its sequences in **stored order** (the curation step's ordering), concatenated
  and cut into samples of ``L + 1`` tokens by :func:`build_sample_index` (native, Megatron's
  ``build_sample_idx``; consecutive samples share one token). When the run needs more samples
  than one pass holds, the same order repeats (another epoch). ``shuffle`` permutes the
  packed samples with a seeded generator (Megatron's default behaviour).
- Several datasets with weights (``--data P1 P2 --data-weights 0.3 0.7``, or Megatron's blend
  ``--data 0.3 P1 0.7 P2``: :func:`parse_blend`): sample ``g`` of the run comes from dataset ``d(g)``, the
  ``k(g)``-th sample of that dataset, chosen so that every prefix of the stream holds each
  dataset in proportion to its weight (within one sample).

Every rank builds the same indices from the same inputs (no rank waits on another), and a
sample is a pure function of its global number, so a run's data position is just
``step * global_batch_size``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lqs_megatron.data.datasets.sample_index import build_sample_index, gather_sample, samples_available
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims


def parse_blend(items: list[str] | str, weights: list[float] | None = None) -> tuple[list[str], list[float] | None]:
    """``--data`` (and ``--data-weights``) -> ``(prefixes, weights)``, Megatron's blend form included.

    ``--data P1 P2 --data-weights 0.3 0.7`` and Megatron-LM's blend ``--data 0.3 P1 0.7 P2`` (as one
    argument, ``"0.3 P1 0.7 P2"``, or several) give the same result. The blend form is recognised when
    the first whitespace-separated token is a number; it must then alternate weight, prefix. Plain
    prefixes are taken as given (a path may hold spaces). Weights are not normalised here
    (:func:`blend_indices` does), and must be finite and >= 0 with a positive sum.
    """
    items = [items] if isinstance(items, str) else [str(x) for x in items]
    tokens = [t for item in items for t in item.split()]
    if tokens and _number(tokens[0]) is not None:
        if weights is not None:
            raise LQSError(
                "--data holds a blend (weight prefix ...): give the weights there or in --data-weights, not both"
            )
        if len(tokens) % 2:
            raise LQSError(f"--data blend {' '.join(tokens)!r}: expected pairs of weight and prefix")
        weights, prefixes = [], []
        for w, p in zip(tokens[::2], tokens[1::2]):
            if _number(w) is None:
                raise LQSError(f"--data blend {' '.join(tokens)!r}: {w!r} is not a weight (expected weight prefix ...)")
            if _number(p) is not None:
                raise LQSError(f"--data blend {' '.join(tokens)!r}: {p!r} should be a dataset prefix, got a number")
            weights.append(_number(w))
            prefixes.append(p)
    else:
        prefixes = items
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(prefixes):
            raise LQSError(f"--data-weights has {len(weights)} values for {len(prefixes)} --data prefixes")
        if any(not np.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
            raise LQSError(f"--data-weights must be finite and >= 0 with a positive sum, got {weights}")
    return prefixes, weights


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class _Cycle:
    """``order[i] = i mod n``: the stored order, repeated (never materialised)."""

    def __init__(self, n: int):
        self.n = n

    def __getitem__(self, i: int) -> int:
        return int(i) % self.n


class PackedSamples:
    """``num_samples`` samples of ``seq_length + 1`` tokens from one indexed dataset."""

    def __init__(self, prefix: str, seq_length: int, num_samples: int, shuffle: bool = False, seed: int = 0):
        self.ds = open_dataset(prefix)  # a dataset or a view: the same sizes, the same samples
        self.prefix, self.seq_length, self.num_samples = str(prefix), seq_length, num_samples
        lengths = np.asarray(self.ds.sequence_lengths, dtype=np.int64)
        total = int(lengths.sum())
        if total < 2:
            raise LQSError(f"dataset {prefix!r} holds {total} token(s); training needs at least 2")
        epochs = 1
        while samples_available(total * epochs, seq_length) < num_samples:
            epochs += 1
        self.epochs = epochs
        self.index = build_sample_index(np.tile(lengths, epochs) if epochs > 1 else lengths, seq_length, num_samples)
        self.order = _Cycle(len(lengths))
        self.perm = np.random.default_rng(seed).permutation(num_samples) if shuffle else None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, k: int) -> np.ndarray:
        j = int(self.perm[k]) if self.perm is not None else int(k)
        return gather_sample(self.ds.get, self.index, self.order, j, self.seq_length)

    def first_document(self, k: int) -> int:
        """The sequence (document index into the dataset) that holds sample ``k``'s first token."""
        j = int(self.perm[k]) if self.perm is not None else int(k)
        return self.order[int(self.index[j][0])]


def blend_indices(weights: list[float], num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dataset_index, dataset_sample_index)`` for ``num_samples`` samples drawn in proportion to ``weights``.

    Dataset ``d``'s ``k``-th sample is placed at the ``(k + 1/2) / w_d`` mark and the marks are
    merged in order (ties to the lower dataset), a deterministic weighted round robin: after
    any ``n`` samples dataset ``d`` has contributed ``n * w_d`` of them, within one.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    keys, ds, ks = [], [], []
    for d, wd in enumerate(w):
        k = np.arange(int(np.ceil(wd * num_samples)) + 1, dtype=np.int64)
        keys.append((k + 0.5) / wd)
        ds.append(np.full(len(k), d, dtype=np.int16))
        ks.append(k)
    order = np.argsort(np.concatenate(keys), kind="stable")[:num_samples]
    return np.concatenate(ds)[order], np.concatenate(ks)[order]


class SampleStream:
    """The global sample sequence of a run: ``stream[g]`` is sample ``g`` (``seq_length + 1`` tokens)."""

    def __init__(
        self,
        prefixes: list[str],
        seq_length: int,
        num_samples: int,
        weights: list[float] | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ):
        prefixes, weights = parse_blend(prefixes, weights)
        self.seq_length, self.num_samples = seq_length, num_samples
        if len(prefixes) == 1:
            self.which = None
            self.parts = [PackedSamples(prefixes[0], seq_length, num_samples, shuffle, seed)]
        else:
            w = weights if weights is not None else [1.0] * len(prefixes)
            self.which, self.k = blend_indices(w, num_samples)
            counts = np.bincount(self.which, minlength=len(prefixes))
            self.parts = [
                PackedSamples(p, seq_length, max(int(n), 1), shuffle, seed + d)
                for d, (p, n) in enumerate(zip(prefixes, counts))
            ]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, g: int) -> np.ndarray:
        if self.which is None:
            return self.parts[0][g]
        return self.parts[int(self.which[g])][int(self.k[g])]

    def first_document(self, g: int) -> tuple[int, int]:
        """``(dataset number in --data, sequence index)`` of the document where sample ``g`` starts."""
        if self.which is None:
            return 0, self.parts[0].first_document(g)
        d = int(self.which[g])
        return d, self.parts[d].first_document(int(self.k[g]))

    def batch(self, indices) -> torch.Tensor:
        """``[len(indices), seq_length + 1]`` int64 tokens."""
        return torch.from_numpy(np.stack([self[int(g)].astype(np.int64) for g in indices]))


def check_token_ids(prefixes: list[str], vocab_size: int, dims: ParallelDims, chunk: int = 1 << 26) -> None:
    """Raise :class:`LQSError` naming the dataset when any token id is ``< 0`` or ``>= vocab_size``.

    Reads every ``.bin`` once, in chunks; the chunks are split over all ranks and the
    extremes all-reduced, so the check costs ``tokens / world_size`` reads per rank. A view is checked on its
    source's ``.bin`` (a superset of its tokens, read front to back rather than gathered).
    """
    ext = torch.zeros(len(prefixes), 2, dtype=torch.int64)  # (max, -min) per dataset
    ext[:, 1] = -np.iinfo(np.int64).max
    ext[:, 0] = np.iinfo(np.int64).min
    for i, prefix in enumerate(prefixes):
        ds = open_dataset(prefix)
        if np.issubdtype(ds.dtype, np.unsignedinteger) and np.iinfo(ds.dtype).max < vocab_size:
            continue  # every id the dtype can hold is in range
        size = os.path.getsize(ds.data_path) // ds.dtype.itemsize
        if size == 0:
            continue
        tokens = np.memmap(ds.data_path, dtype=ds.dtype, mode="r", shape=(size,))
        for c in range(dims.rank, -(-size // chunk), dims.world_size):
            part = tokens[c * chunk : (c + 1) * chunk]
            ext[i, 0] = max(int(ext[i, 0]), int(part.max()))
            ext[i, 1] = max(int(ext[i, 1]), -int(part.min()))
    if dims.distributed:
        dims.all_reduce(ext, op="max")
    for i, prefix in enumerate(prefixes):
        hi, lo = int(ext[i, 0]), -int(ext[i, 1])
        if hi >= vocab_size:
            raise LQSError(
                f"dataset {prefix!r} holds token id {hi}, but the model's vocabulary has {vocab_size} ids "
                f"(was it tokenized with another tokenizer?)"
            )
        if hi > np.iinfo(np.int64).min and lo < 0:
            raise LQSError(f"dataset {prefix!r} holds a negative token id {lo}")
