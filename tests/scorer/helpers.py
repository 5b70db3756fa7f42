"""Test data for the scorer: documents whose score is a simple property of the text.

Each document is a window of ``words`` words of real English (``demo_texts()``) in which a
random fraction ``f`` of the words is replaced by junk (random letter strings). The true
score is ``-f``: the more degraded, the worse. A scorer that reads the text can learn it.
"""

from __future__ import annotations

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter, optimal_dtype
from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer, vocab_size
from tests.conftest import demo_texts

LETTERS = np.array(list("bcdfghjklmnpqrstvwxz"))


def degraded_docs(n: int, seed: int, min_words: int = 12, max_words: int = 48) -> tuple[list[str], np.ndarray]:
    """``n`` documents and their true scores ``-f`` (``f`` uniform in [0, 1])."""
    rng = np.random.default_rng(seed)
    words = " ".join(demo_texts()).split()
    texts, scores = [], np.empty(n)
    for i in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        start = int(rng.integers(0, len(words) - k))
        doc = list(words[start : start + k])
        f = float(rng.uniform(0, 1))
        for j in np.flatnonzero(rng.random(k) < f):
            doc[j] = "".join(rng.choice(LETTERS, size=int(rng.integers(3, 9))))
        texts.append(" ".join(doc))
        scores[i] = -f
    return texts, scores


def write_dataset(prefix, tokenizer_dir: str, texts: list[str]) -> IndexedDataset:
    """Tokenize ``texts`` (EOS appended, one sequence per document) into ``prefix``."""
    tok = load_tokenizer(tokenizer_dir)
    with IndexedDatasetWriter(prefix, optimal_dtype(vocab_size(tok))) as w:
        for t in texts:
            w.add_document(tok(t).input_ids + [tok.eos_token_id])
    return IndexedDataset(prefix)


def write_token_dataset(prefix, seqs, dtype=np.uint16) -> IndexedDataset:
    """Write raw token sequences into ``prefix``."""
    with IndexedDatasetWriter(prefix, dtype) as w:
        for s in seqs:
            w.add_document(np.asarray(s, dtype=dtype))
    return IndexedDataset(prefix)
