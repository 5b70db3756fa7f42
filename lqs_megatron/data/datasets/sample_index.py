"""Packing documents into fixed-length training samples (Megatron's ``build_sample_idx``).

The documents are taken in a given consumption order (the dataset's stored order,
repeated for as many epochs as needed) and concatenated; sample ``k`` is the
``seq_length + 1`` tokens starting at row ``k`` of the index, so consecutive samples
share one token (the last label of one sample is the first input of the next),
exactly as Megatron's GPT dataset does.

Row ``k`` of the index is ``(i, offset)``: position ``i`` in the consumption order
and the token offset inside that document. The native implementation lives in
``csrc/`` (``lqs_megatron._C.build_sample_index``); :func:`build_sample_index_py`
is the reference that tests compare it with.
"""

from __future__ import annotations

import numpy as np

from lqs_megatron.errors import LQSError


def samples_available(total_tokens: int, seq_length: int) -> int:
    """How many samples of ``seq_length + 1`` tokens (sharing one) fit in ``total_tokens``."""
    return max((total_tokens - 1) // seq_length, 0)


def build_sample_index_py(doc_lengths: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """Reference implementation; ``doc_lengths`` are the token counts in consumption order.

    Returns an int64 array of shape ``(num_samples + 1, 2)``.
    """
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    if seq_length < 1:
        raise LQSError(f"seq_length must be >= 1, got {seq_length}")
    if num_samples > samples_available(int(doc_lengths.sum()), seq_length):
        raise LQSError(
            f"{num_samples} samples of {seq_length} tokens need {num_samples * seq_length + 1} tokens, "
            f"the documents hold {int(doc_lengths.sum())}"
        )
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    i, offset = 0, 0
    for k in range(1, num_samples + 1):
        remaining = seq_length + 1
        while remaining:
            avail = int(doc_lengths[i]) - offset
            remaining -= avail
            if remaining <= 0:
                offset += remaining + avail - 1  # the last token is shared with the next sample
                remaining = 0
            else:
                i += 1
                offset = 0
        out[k] = (i, offset)
    return out


def build_sample_index(doc_lengths: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """Native ``build_sample_index`` when the extension is built, else the reference."""
    try:
        from lqs_megatron import _C
    except ImportError:  # pragma: no cover - the extension is part of every install
        return build_sample_index_py(doc_lengths, seq_length, num_samples)
    if not hasattr(_C, "build_sample_index"):
        return build_sample_index_py(doc_lengths, seq_length, num_samples)
    try:
        return _C.build_sample_index(
            np.ascontiguousarray(doc_lengths, dtype=np.int64), int(seq_length), int(num_samples)
        )
    except ValueError as e:  # std::invalid_argument
        raise LQSError(str(e)) from None


def gather_sample(read, index: np.ndarray, order: np.ndarray, k: int, seq_length: int) -> np.ndarray:
    """Tokens of sample ``k`` (``seq_length + 1`` of them).

    ``read(doc, offset, length)`` returns tokens of document ``doc`` (an index into the
    dataset, i.e. ``order[i]``); ``index`` comes from :func:`build_sample_index`.
    """
    (i0, o0), (i1, o1) = index[k], index[k + 1]
    if i0 == i1:
        return np.asarray(read(int(order[i0]), int(o0), int(o1 - o0 + 1)))
    parts = [read(int(order[i0]), int(o0), None)]
    parts += [read(int(order[i]), 0, None) for i in range(i0 + 1, i1)]
    parts.append(read(int(order[i1]), 0, int(o1 + 1)))
    return np.concatenate(parts)
