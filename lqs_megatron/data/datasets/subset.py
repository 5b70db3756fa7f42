"""Copy chosen sequences of an indexed dataset, in a chosen order, into a new dataset.

The one gather behind ``sample-proxy``, ``select`` and ``order``: output sequence ``j``
is input sequence ``indices[j]``, token for token, in the input's dtype, and **each
output sequence is its own document** (the input's document boundaries do not survive
a reordering, so none are kept; ``document_indices`` is ``0, 1, ..., K``).

Bytes are copied straight from the input's ``.bin`` (no decode, no dtype round trip).
Runs of indices that are contiguous in the input (``i, i+1, ...``, the usual case for
a selection, which keeps the input order) are copied as one block; scattered indices
(an ordering) are gathered a block of sequences at a time, so the number of write
calls stays small. The output goes through :func:`~lqs_megatron.utils.atomic.atomic_prefix`
(``.idx`` renamed last): a killed run leaves nothing that looks finished.

:func:`write_subset_with_sidecars` adds the ``PREFIX.<name>.npy`` arrays that describe
the output (``indices``, ``scores``) in a kill-safe order: the old ``PREFIX.idx`` is
removed first, the sidecars written next, the dataset (``.idx`` last) at the end, so a
complete-looking ``PREFIX.bin/.idx`` pair always has sidecars of the same run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, bin_path, idx_path, write_index
from lqs_megatron.data.datasets.meta import has_meta, meta_path, subset_meta
from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer, write_dataset_identity
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_prefix, save_npy

_BLOCK_BYTES = 64 << 20  # gather buffer: at most this many bytes per write call


def check_indices(indices: np.ndarray, n: int, name: str = "indices") -> np.ndarray:
    """``indices`` as a 1-D int64 array of valid positions in ``[0, n)``; raise :class:`LQSError` otherwise."""
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise LQSError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise LQSError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise LQSError(f"{name} out of range: [{arr.min()}, {arr.max()}] for a dataset of {n} sequences")
    return arr


def write_subset(data: IndexedDataset | str | os.PathLike, indices, out_prefix: str | os.PathLike) -> int:
    """Write the sequences ``data[indices[0]], data[indices[1]], ...`` to ``out_prefix``.

    Returns the number of tokens written. Indices may repeat (the sequence is copied
    each time). ``out_prefix`` must differ from the input's prefix: the commands check that with the output
    rule (:func:`~lqs_megatron.utils.lock.output_lock`).
    """
    ds = data if isinstance(data, IndexedDataset) else _open(data)
    idx = check_indices(indices, len(ds))
    lengths = ds.sequence_lengths[idx].astype(np.int64)
    with atomic_prefix(out_prefix) as tmp:
        with open(bin_path(tmp), "wb") as f:
            for block in gathered_bytes(ds, idx):
                f.write(block.data)
        write_index(idx_path(tmp), ds.dtype, lengths.astype(np.int32), np.arange(len(idx) + 1, dtype=np.int64))
    return int(lengths.sum())


def gathered_bytes(ds: IndexedDataset, idx: np.ndarray) -> Iterator[np.ndarray]:
    """The bytes of sequences ``ds[idx[0]], ds[idx[1]], ...`` back to back, as uint8 blocks of about
    ``_BLOCK_BYTES`` (each a whole number of tokens; ``ds`` may be a view: its pointers lead into its source)."""
    itemsize = ds.dtype.itemsize
    lengths = ds.sequence_lengths[idx].astype(np.int64)
    starts = ds.sequence_pointers[idx].astype(np.int64)
    ends = starts + lengths * itemsize
    # Coalesce: a new run begins wherever a sequence does not start where the previous one ended.
    new_run = np.ones(len(idx), dtype=bool)
    new_run[1:] = starts[1:] != ends[:-1]
    run_first = np.flatnonzero(new_run)
    run_starts = starts[run_first]
    run_ends = np.append(ends[run_first[1:] - 1], ends[-1]) if len(idx) else run_starts
    if not lengths.sum():
        return
    src = np.memmap(ds.data_path, mode="r", dtype=np.uint8)
    step = _BLOCK_BYTES - _BLOCK_BYTES % itemsize
    block: list[np.ndarray] = []
    block_bytes = 0
    for s, e in zip(run_starts.tolist(), run_ends.tolist()):
        if e == s:  # empty sequences only
            continue
        if e - s >= _BLOCK_BYTES:  # a long run: flush, then stream it in slices
            if block:
                yield np.concatenate(block)
                block, block_bytes = [], 0
            for off in range(s, e, step):
                yield src[off : min(off + step, e)]
            continue
        block.append(src[s:e])
        block_bytes += e - s
        if block_bytes >= _BLOCK_BYTES:
            yield np.concatenate(block)
            block, block_bytes = [], 0
    if block:
        yield np.concatenate(block)


def _open(prefix: str | os.PathLike) -> IndexedDataset:
    from lqs_megatron.data.datasets.view import open_dataset

    return open_dataset(prefix)


def sidecar_path(prefix: str | os.PathLike, name: str) -> str:
    """``PREFIX.<name>.npy``: an array that describes the dataset at ``PREFIX`` (e.g. ``indices``, ``scores``)."""
    return f"{prefix}.{name}.npy"


def write_subset_with_sidecars(
    data: IndexedDataset | str | os.PathLike,
    indices,
    out_prefix: str | os.PathLike,
    sidecars: dict[str, np.ndarray],
    command: str = "subset",
) -> int:
    """:func:`write_subset` plus ``out_prefix.<name>.npy`` for each array of ``sidecars``, kill-safe.

    Order of writes: remove an old ``out_prefix.idx`` (so an old output can never pair
    with new sidecars), write every sidecar atomically (and the metadata sidecar
    ``PREFIX.meta.jsonl`` gathered from the input's, when it has one:
    :mod:`lqs_megatron.data.datasets.meta`, and ``PREFIX.stats.json``: ``command``, the input's tokenizer
    identity and the input prefix as ``source``, :mod:`lqs_megatron.data.tokenizers.fingerprint`), then the
    dataset, ``.idx`` last.
    Returns the number of tokens written.
    """
    ds = data if isinstance(data, IndexedDataset) else _open(data)
    for old in (idx_path(out_prefix), f"{out_prefix}.view.json"):  # an old dataset or view of this output
        if os.path.exists(old):
            os.unlink(old)
    for name, array in sidecars.items():
        save_npy(sidecar_path(out_prefix, name), np.asarray(array))
    idx = check_indices(indices, len(ds))
    write_dataset_identity(out_prefix, command, dataset_tokenizer(ds.prefix), source=os.path.abspath(ds.prefix))
    root, positions = ds.root(idx)  # a view's provenance is its source's, gathered by the view's indices
    if not subset_meta(root.prefix, positions, out_prefix, len(root)) and has_meta(out_prefix):
        os.unlink(meta_path(out_prefix))  # an old run's provenance must not pair with this output
    return write_subset(ds, idx, out_prefix)
