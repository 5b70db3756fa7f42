"""Indexed dataset (+ scores) -> jsonl with the decoded text (DELT's ``bin2jsonl``).

One line per sequence, in dataset order::

    {"index": 0, "text": "...", "score": 0.73}

- ``index``: the sequence's position in the dataset given (for a proxy sample or a
  selection, map it back to the corpus with that dataset's ``PREFIX.indices.npy``);
- ``text``: the tokens decoded with the tokenizer. One trailing EOS (the one ``lqs
  tokenize`` appends to every document) is removed first, and the remaining special
  tokens (BOS, PAD, an EOS inside a chunk that spans documents) are skipped, as DELT's
  tool does (``skip_special_tokens=True``);
- ``score``: present only with a score file; it must have one finite score per sequence.
  ``float32`` scores are written with the shortest decimal that reads back as the same
  ``float32`` (``0.3``, not ``0.30000001192092896``).

The output is written through :func:`~lqs_megatron.utils.atomic.atomic_file`: a
killed export leaves no ``.jsonl`` behind. Such a file is also what ``lqs select`` /
``lqs order`` take as jsonl input (their ``--score-field`` defaults to ``score``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np

from lqs_megatron.data.indexed import IndexedDataset
from lqs_megatron.data.scores import check_scores, json_floats, read_scores
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file

logger = logging.getLogger(__name__)


def export_jsonl(
    data_prefix: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    scores: str | os.PathLike | np.ndarray | None = None,
    batch_size: int = 1024,
) -> dict:
    """Write ``out_path`` (see the module docstring); returns ``{"path", "num_lines", "with_scores"}``."""
    from tqdm import tqdm

    from lqs_megatron.data.tokenizer import load_tokenizer

    ds = IndexedDataset(data_prefix)
    n = len(ds)
    values = None
    if scores is not None:
        is_path = isinstance(scores, (str, os.PathLike))
        raw = read_scores(scores) if is_path else np.asarray(scores)
        check_scores(raw, n, name=str(scores) if is_path else "scores")
        values = json_floats(raw)
    if batch_size < 1:
        raise LQSError(f"batch_size must be >= 1, got {batch_size}")
    tok = load_tokenizer(str(tokenizer_dir))
    eos = tok.eos_token_id
    with atomic_file(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        bar = tqdm(total=n, desc="export-jsonl", unit="seq", file=sys.stderr, disable=not sys.stderr.isatty())
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            ids = []
            for i in range(start, stop):
                seq = ds[i].tolist()
                if seq and seq[-1] == eos:
                    seq = seq[:-1]
                ids.append(seq)
            texts = tok.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for j, text in enumerate(texts):
                row = {"index": start + j, "text": text}
                if values is not None:
                    row["score"] = values[start + j]
                f.write(json.dumps(row, ensure_ascii=False))
                f.write("\n")
            bar.update(stop - start)
        bar.close()
    logger.info("exported %d sequences of %s -> %s", n, data_prefix, out_path)
    return {"path": str(out_path), "num_lines": n, "with_scores": values is not None}
