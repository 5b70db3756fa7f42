"""Merging indexed datasets: several ``PREFIX.bin/.idx`` -> one, in the order given.

The merged dataset holds every sequence of the first input, then of the second, and
so on, with the inputs' document boundaries kept: the document indices of input
``k`` are shifted by the number of sequences before it (``offset + doc_idx[1:]``).
Dropping that offset is the classic merge bug (document starts pointing into the
first input); the tests compare with megatron-core's ``IndexedDatasetBuilder.add_index``.

``OUT.stats.json`` records the inputs and their one tokenizer identity
(:func:`~lqs_megatron.data.tokenizers.fingerprint.inputs_tokenizer`): inputs tokenized with different
tokenizers are refused unless ``allow_tokenizer_mismatch`` (``--allow-tokenizer-mismatch``),
and then the identity recorded is "mixed", which no model matches.

A provenance sidecar ``PREFIX.meta.jsonl`` (:mod:`lqs_megatron.data.datasets.meta`) is merged the
same way, its lines in the order of the sequences: all inputs have one, or none.

Token dtypes: inputs of one dtype merge in that dtype (the ``.bin`` bytes are copied
as they are). Integer inputs of different dtypes are upcast to the smallest integer
dtype that holds them all (``numpy.result_type``, e.g. ``uint16`` + ``int32`` ->
``int32``), converted a block at a time; a warning says so. Anything else (a float
token dataset, or a common dtype the format cannot store, such as ``uint64``) is an
error.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from lqs_megatron.data.datasets.indexed import DType, IndexedDataset, bin_path, idx_path, write_index
from lqs_megatron.data.datasets.meta import concat_meta, has_meta, meta_path
from lqs_megatron.data.datasets.subset import gathered_bytes
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.data.tokenizers.fingerprint import inputs_tokenizer, write_dataset_identity
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_prefix

logger = logging.getLogger(__name__)

_BLOCK_TOKENS = 16 << 20


def merged_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """The dtype of the merged dataset (see the module docstring); :class:`LQSError` when there is none."""
    uniq = sorted({np.dtype(d) for d in dtypes}, key=str)
    if len(uniq) == 1:
        return uniq[0]
    if any(d.kind not in "iu" for d in uniq):
        raise LQSError(f"cannot merge datasets of token dtypes {', '.join(map(str, uniq))}: only integer dtypes upcast")
    out = np.result_type(*uniq)
    try:
        DType.code(out)
    except KeyError:
        raise LQSError(
            f"cannot merge token dtypes {', '.join(map(str, uniq))}: their common dtype {out} is not storable "
            "in the indexed format"
        ) from None
    return np.dtype(out)


def _is_packed(ds: IndexedDataset) -> bool:
    """True when the sequences lie back to back from byte 0 (the layout every standard writer produces)."""
    n = len(ds)
    if n == 0:
        return True
    expected = np.zeros(n, dtype=np.int64)
    np.cumsum(ds.sequence_lengths[:-1].astype(np.int64) * ds.dtype.itemsize, out=expected[1:])
    return bool(np.array_equal(expected, ds.sequence_pointers))


def merge_datasets(
    prefixes: list[str | os.PathLike], out_prefix: str | os.PathLike, allow_tokenizer_mismatch: bool = False
) -> dict:
    """Merge the datasets at ``prefixes`` (in that order) into ``out_prefix`` (+ ``out_prefix.stats.json``).

    Returns ``{"prefix", "dtype", "num_sequences", "num_documents", "num_tokens", "inputs"}``.
    """
    if not prefixes:
        raise LQSError("--data needs at least one dataset to merge")
    datasets = [open_dataset(p) for p in prefixes]
    for ds in datasets:
        docs = ds.document_indices
        if len(docs) == 0 or docs[0] != 0 or docs[-1] != len(ds) or np.any(np.diff(docs) < 0):
            raise LQSError(f"{idx_path(ds.prefix)}: malformed document indices (they must rise from 0 to {len(ds)})")
    dtype = merged_dtype([ds.dtype for ds in datasets])
    tokenizer = inputs_tokenizer([ds.prefix for ds in datasets], allow_tokenizer_mismatch)
    if any(ds.dtype != dtype for ds in datasets):
        logger.warning("merging token dtypes %s: upcasting to %s", ", ".join(str(ds.dtype) for ds in datasets), dtype)
    lengths = np.concatenate([ds.sequence_lengths for ds in datasets]).astype(np.int32)
    doc_parts = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for ds in datasets:
        doc_parts.append(ds.document_indices[1:].astype(np.int64) + offset)
        offset += len(ds)
    documents = np.concatenate(doc_parts)
    # kill-safe: the old index goes first, then the sidecar (or a stale one), then the dataset (.idx last)
    if os.path.exists(idx_path(out_prefix)):
        os.unlink(idx_path(out_prefix))
    inputs = [os.path.abspath(ds.prefix) for ds in datasets]
    write_dataset_identity(out_prefix, "merge", tokenizer, inputs=inputs)
    roots = [ds.root(np.arange(len(ds))) if ds.is_view else (ds, None) for ds in datasets]  # a view's provenance
    has_sidecar = concat_meta(
        [r.prefix for r, _ in roots], [len(r) for r, _ in roots], out_prefix, picks=[p for _, p in roots]
    )
    if not has_sidecar and has_meta(out_prefix):
        os.unlink(meta_path(out_prefix))
    with atomic_prefix(out_prefix) as tmp:
        with open(bin_path(tmp), "wb") as out:
            for ds in datasets:
                _append_tokens(ds, dtype, out)
        write_index(idx_path(tmp), dtype, lengths, documents)
    info = {
        "prefix": str(out_prefix),
        "dtype": str(dtype),
        "num_sequences": int(len(lengths)),
        "num_documents": int(len(documents) - 1),
        "num_tokens": int(lengths.sum(dtype=np.int64)),
        "inputs": [str(p) for p in prefixes],
        "meta": meta_path(out_prefix) if has_sidecar else None,
    }
    logger.info(
        "merged %d datasets -> %s (%d sequences, %d tokens)",
        len(datasets),
        out_prefix,
        len(lengths),
        info["num_tokens"],
    )
    return info


def _append_tokens(ds: IndexedDataset, dtype: np.dtype, out) -> None:
    """Append the tokens of ``ds`` (in sequence order) to the open file ``out`` in ``dtype``."""
    if ds.num_tokens == 0:
        return
    if ds.dtype == dtype and _is_packed(ds):  # the common case: copy the referenced bytes as they are
        need = ds.num_tokens * ds.dtype.itemsize
        with open(ds.data_path, "rb") as f:
            remaining = need
            while remaining:
                buf = f.read(min(remaining, 64 << 20))
                if not buf:
                    raise LQSError(f"{ds.data_path}: ended early")
                out.write(buf)
                remaining -= len(buf)
        return
    if ds.dtype == dtype or ds.is_view:  # a view or an exotic layout: gathered in blocks of whole sequences
        for block in gathered_bytes(ds, np.arange(len(ds))):
            out.write(block.data if ds.dtype == dtype else block.view(ds.dtype).astype(dtype).tobytes())
        return
    src = np.memmap(bin_path(ds.prefix), mode="r", dtype=ds.dtype, shape=(ds.num_tokens,)) if _is_packed(ds) else None
    if src is not None:
        total = ds.num_tokens
        for start in range(0, total, _BLOCK_TOKENS):
            out.write(np.asarray(src[start : min(start + _BLOCK_TOKENS, total)]).astype(dtype).tobytes())
    else:
        for i in range(len(ds)):
            out.write(ds[i].astype(dtype).tobytes())
