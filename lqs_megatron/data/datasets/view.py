"""Views: chosen sequences of a dataset, in a chosen order, stored as indices instead of a copy.

``lqs select --view`` and ``lqs order --view`` write, instead of a new ``OUT.bin/.idx``:

- ``OUT.view.json``: ``{"format": "lqs-view", "version": 1, "command", "source", "source_fingerprint",
  "num_sequences", "num_tokens", "dtype"}``; ``source`` is the absolute prefix of the dataset the
  indices point into and ``source_fingerprint`` its ``.bin``/``.idx`` sizes and sampled digests
  (:func:`~lqs_megatron.data.preprocess.writing.file_digest`, the one file-hash helper);
- ``OUT.indices.npy`` (int64): view sequence ``j`` is source sequence ``indices[j]``;
- ``OUT.scores.npy``: the scores of the view's sequences, in view order (as ``select``/``order`` write);
- ``OUT.stats.json``: the command, the source's tokenizer identity and ``source``, exactly as a copy's.

A view of a view **composes**: its indices map straight into the original source (``select --view``
then ``order --view`` gives ``sel.indices[ord_positions]``), so reading never chains.

:func:`open_dataset` is the one way to open a dataset prefix: a ``PREFIX.bin/.idx`` pair gives an
:class:`~lqs_megatron.data.datasets.indexed.IndexedDataset`, a ``PREFIX.view.json`` a
:class:`DatasetView`, which has the same interface (``len``, ``ds[i]``, ``get``, ``span``,
``sequence_lengths``, ``sequence_pointers``, ``document_indices``, ``dtype``, ``num_tokens``, ``prefix``,
``data_path``): its lengths (and, when asked for, byte pointers) are the source's gathered with one
vectorised index, ``ds[i]`` is ``source[indices[i]]`` through the memory-mapped indices, and each of its
sequences is its own document (as in a copy), so everything built on a dataset (sample packing, evaluation,
scoring) sees exactly what it would see on the materialised copy.
A view whose source changed (sizes or sampled digests differ) is refused with one line, never read.
:func:`materialize` writes the copy: byte-identical to ``select``/``order`` without ``--view``.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, bin_path, dataset_exists, idx_path
from lqs_megatron.data.datasets.meta import has_meta, iter_meta, meta_lines, meta_path
from lqs_megatron.data.datasets.subset import check_indices, gathered_bytes, sidecar_path, write_subset_with_sidecars
from lqs_megatron.data.preprocess.writing import file_digest
from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer, write_dataset_identity
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import save_json, save_npy

VIEW_SUFFIX = ".view.json"
VIEW_FORMAT = "lqs-view"
VIEW_VERSION = 1
_KEYS = ("format", "version", "command", "source", "source_fingerprint", "num_sequences", "num_tokens", "dtype")


def view_path(prefix: str | os.PathLike) -> str:
    """``PREFIX.view.json``."""
    return f"{prefix}{VIEW_SUFFIX}"


def is_view(prefix: str | os.PathLike) -> bool:
    """True when ``prefix`` is a view: ``PREFIX.view.json`` and no ``PREFIX.bin/.idx`` pair (a pair wins)."""
    return not dataset_exists(prefix) and os.path.isfile(view_path(prefix))


def data_exists(prefix: str | os.PathLike) -> bool:
    """True when ``prefix`` names a dataset :func:`open_dataset` can open (a ``.bin/.idx`` pair or a view)."""
    return dataset_exists(prefix) or os.path.isfile(view_path(prefix))


def open_dataset(prefix: str | os.PathLike) -> IndexedDataset:
    """The dataset at ``prefix``: an :class:`IndexedDataset`, or a :class:`DatasetView` for a view."""
    return DatasetView(prefix) if is_view(prefix) else IndexedDataset(prefix)


def source_fingerprint(prefix: str | os.PathLike) -> dict:
    """What ties a view to its source: the sizes and sampled digests of ``PREFIX.bin`` and ``PREFIX.idx``."""
    b, i = bin_path(prefix), idx_path(prefix)
    return {
        "bin_size": os.path.getsize(b),
        "bin_digest": file_digest(b, sampled=True),
        "idx_size": os.path.getsize(i),
        "idx_digest": file_digest(i, sampled=True),
    }


class DatasetView(IndexedDataset):
    """A view (see the module docstring), read through its source's memory map; checked against the source."""

    is_view = True

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        path = view_path(prefix)
        try:
            with open(path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise LQSError(f"view {self.prefix!r}: missing {path}") from None
        except (OSError, ValueError) as e:
            raise LQSError(f"{path}: not a readable view ({e})") from None
        missing = [k for k in _KEYS if not isinstance(meta, dict) or k not in meta]
        if missing or meta["format"] != VIEW_FORMAT:
            raise LQSError(f"{path}: not an lqs view (expected format {VIEW_FORMAT!r} with keys {', '.join(_KEYS)})")
        if meta["version"] != VIEW_VERSION:
            raise LQSError(f"{path}: view version {meta['version']} is not supported (expected {VIEW_VERSION})")
        self.meta = meta
        self.command = meta["command"]
        self.source = str(meta["source"])
        if not dataset_exists(self.source):
            raise LQSError(
                f"{path}: its source {self.source} is gone (no {self.source}.bin/.idx); the view cannot be read"
            )
        now = source_fingerprint(self.source)
        changed = [k for k, v in meta["source_fingerprint"].items() if now.get(k) != v]
        if changed:
            raise LQSError(
                f"{path}: its source {self.source} changed since the view was written ({', '.join(changed)} differ); "
                "the view is not read: write it again from the source as it is now"
            )
        self.base = IndexedDataset(self.source)
        ipath = sidecar_path(prefix, "indices")
        try:
            indices = np.load(ipath, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise LQSError(f"view {self.prefix!r}: cannot read {ipath} ({e})") from None
        if indices.ndim != 1 or indices.dtype != np.int64 or len(indices) != meta["num_sequences"]:
            raise LQSError(
                f"{ipath}: expected {meta['num_sequences']} int64 indices (as {path} says), got {indices.dtype} "
                f"of shape {indices.shape}; the files belong to different runs"
            )
        self.indices = check_indices(indices, len(self.base), name=ipath)
        self.dtype = self.base.dtype
        self.sequence_lengths = self.base.sequence_lengths[self.indices]  # 4 bytes a sequence, in memory
        self.document_indices = np.arange(len(self.indices) + 1, dtype=np.int64)  # each sequence its own document
        if self.num_tokens != meta["num_tokens"]:
            raise LQSError(f"{path}: says {meta['num_tokens']} tokens, its indices select {self.num_tokens}")
        self._idx = None
        self._bin = self.base._bin
        self.data_path = self.base.data_path

    @functools.cached_property
    def sequence_pointers(self) -> np.ndarray:
        """Byte offsets of the view's sequences in the source's ``.bin`` (gathered on first use: reading one
        sequence goes through the memory-mapped indices, so pretraining never holds them)."""
        return self.base.sequence_pointers[self.indices]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.base[int(self.indices[self.position(i)])]

    @property
    def index_files(self) -> list[str]:
        """The view's own files and its source's index."""
        return [view_path(self.prefix), sidecar_path(self.prefix, "indices"), *self.base.index_files]

    def root(self, indices: np.ndarray) -> tuple[IndexedDataset, np.ndarray]:
        return self.base, self.indices[np.asarray(indices, dtype=np.int64)]

    def span(self, start: int, stop: int) -> np.ndarray:
        """The tokens of sequences ``start .. stop-1``, back to back (a copy: a view's sequences lie apart)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"sequences [{start}, {stop}) out of range for {len(self)} sequences")
        blocks = list(gathered_bytes(self, np.arange(start, stop)))
        return np.concatenate(blocks).view(self.dtype) if blocks else np.zeros(0, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"DatasetView({self.prefix!r}, source={self.source!r}, sequences={len(self)}, tokens={self.num_tokens})"


def write_view(
    data: IndexedDataset | str | os.PathLike,
    indices,
    out_prefix: str | os.PathLike,
    scores: np.ndarray | None,
    command: str,
) -> dict:
    """Write the view ``out_prefix`` of sequences ``data[indices[0]], data[indices[1]], ...`` (composed when
    ``data`` is itself a view). Kill-safe: an old view file and an old dataset at ``out_prefix`` go first, the
    sidecars are written next, ``OUT.view.json`` (the completion mark) last. Returns the view's record."""
    ds = data if isinstance(data, IndexedDataset) else open_dataset(data)
    idx = check_indices(indices, len(ds))
    root, positions = ds.root(idx)
    for p in (view_path(out_prefix), idx_path(out_prefix), bin_path(out_prefix), meta_path(out_prefix)):
        if os.path.exists(p):
            os.unlink(p)  # an old copy's tokens must not outlive it, nor shadow the view (a .bin/.idx pair wins)
    if scores is not None:
        save_npy(sidecar_path(out_prefix, "scores"), np.asarray(scores))
    save_npy(sidecar_path(out_prefix, "indices"), positions)
    source = os.path.abspath(root.prefix)
    write_dataset_identity(out_prefix, command, dataset_tokenizer(ds.prefix), source=source)
    record = {
        "format": VIEW_FORMAT,
        "version": VIEW_VERSION,
        "command": command,
        "source": source,
        "source_fingerprint": ds.meta["source_fingerprint"] if ds.is_view else source_fingerprint(root.prefix),
        "num_sequences": int(len(positions)),
        "num_tokens": int(root.sequence_lengths[positions].sum(dtype=np.int64)),
        "dtype": str(root.dtype),
    }
    save_json(view_path(out_prefix), record)
    return record


def materialize(view_prefix: str | os.PathLike, out_prefix: str | os.PathLike) -> dict:
    """Write the view at ``view_prefix`` as an indexed dataset ``out_prefix`` with its sidecars: byte-identical to
    what the view's command (``select``/``order``) writes without ``--view`` from the view's source."""
    view = open_dataset(view_prefix)
    if not view.is_view:
        raise LQSError(f"--data {view_prefix}: not a view (no {view_path(view_prefix)}); it is a dataset already")
    sidecars = {}
    scores_file = sidecar_path(view_prefix, "scores")
    if os.path.isfile(scores_file):
        scores = np.load(scores_file)
        if len(scores) != len(view):
            raise LQSError(f"{scores_file}: {len(scores)} scores for the {len(view)} sequences of the view")
        sidecars["scores"] = scores
    sidecars["indices"] = np.asarray(view.indices)
    tokens = write_subset_with_sidecars(view.base, view.indices, out_prefix, sidecars, view.command)
    return {
        "prefix": str(out_prefix),
        "source": view.source,
        "command": view.command,
        "num_sequences": len(view),
        "num_tokens": tokens,
    }


def dataset_meta(data: IndexedDataset | str | os.PathLike):
    """The metadata records (``PREFIX.meta.jsonl``, :mod:`~lqs_megatron.data.datasets.meta`) of a dataset in its
    order, an iterator of dicts; ``None`` when it has none. A view's are its source's, gathered by its indices."""
    if not isinstance(data, IndexedDataset):
        if not is_view(data):
            return iter_meta(data) if has_meta(data) else None
        data = open_dataset(data)
    ds = data
    if not ds.is_view:
        return iter_meta(ds.prefix) if has_meta(ds.prefix) else None
    if not has_meta(ds.base.prefix):
        return None
    return (json.loads(line) for line in meta_lines(ds.base.prefix, ds.indices, len(ds.base)))
