"""Chunk mode: the token stream cut into chunks of at most ``L`` tokens, at sentence ends where possible.

This is how PDS and DELT prepare CommonCrawl: documents (each ``ids + [EOS]``, exactly the
document-mode sequences) are concatenated into one stream, which is cut into chunks
(one sequence and one document each) of at most ``max_length`` tokens. No token is lost
or changed: the chunks, concatenated, are the document-mode stream.

Where a chunk ends (each decision sees only the next ``max_length`` tokens, so it does not
depend on batching or worker count):

- a chunk may end after a *boundary token*: a document's EOS; the last token before a
  sentence gap (the next chunk starts with the first token that begins in the whitespace
  between two sentences, or else with the token holding the next sentence's first
  character, provided no token straddles the two sentences); the token ending a line;
- the chunk ends at the last boundary among its positions ``ceil(max_length * MIN_FILL) ..
  max_length`` (so a chunk is at least half full), else exactly at ``max_length`` (a hard
  cut inside a sentence longer than the window);
- the stream's final chunk holds whatever remains (it may be shorter).

Sentences come from an nltk Punkt model *trained on the corpus itself*
(:func:`train_sentence_splitter`, on the first ``sample_chars`` characters of valid
texts): no nltk data package is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np

MIN_FILL = 0.5
"""A chunk ends at a sentence boundary only if it keeps at least this fraction of ``max_length``."""

_NEWLINE = re.compile("\n")


def train_sentence_splitter(texts: Iterable[str], sample_chars: int = 2_000_000):
    """Train nltk's Punkt on texts until ``sample_chars`` characters are seen; return its parameters."""
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    seen = 0
    for text in texts:
        trainer.train(text[: max(sample_chars - seen, 0)], finalize=False)
        seen += len(text)
        if seen >= sample_chars:
            break
    trainer.finalize_training()
    return trainer.get_params()


class SentenceBoundaries:
    """Marks, for one encoded document, the tokens after which a chunk may end."""

    def __init__(self, punkt_params):
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.splitter = PunktSentenceTokenizer(punkt_params)

    def gaps(self, text: str) -> list[tuple[int, int]]:
        """Character gaps ``(lo, hi)``: the whitespace between two sentences, and the point after each line break."""
        spans = list(self.splitter.span_tokenize(text))
        gaps = [(spans[k][1], spans[k + 1][0]) for k in range(len(spans) - 1)]
        gaps += [(m.end(), m.end()) for m in _NEWLINE.finditer(text)]
        return gaps

    def flags(self, text: str, encoding) -> np.ndarray:
        """uint8 per token: 1 where a chunk may end after that token (a ``tokenizers.Encoding``)."""
        flags = np.zeros(len(encoding.ids), dtype=np.uint8)
        for lo, hi in self.gaps(text):
            # cut before the first token that starts inside the gap (so whitespace opens the next
            # chunk), else before the token holding the next sentence's first character
            for pos in (lo, hi) if lo < hi else (lo,):
                j = encoding.char_to_token(pos)
                if j is not None and j > 0 and encoding.token_to_chars(j)[0] >= lo:
                    flags[j - 1] = 1  # token j holds nothing of the text before the gap
                    break
        return flags


class Chunker:
    """Cuts a stream of ``(tokens, flags)`` pieces into chunks; see the module docstring."""

    def __init__(self, max_length: int, dtype: np.dtype):
        if max_length < 1:
            raise ValueError("max_length must be >= 1")
        self.max_length = max_length
        self.min_length = max(1, math.ceil(max_length * MIN_FILL))
        self._tokens = np.zeros(0, dtype=dtype)
        self._flags = np.zeros(0, dtype=np.uint8)
        self.sentence_cuts = 0
        self.hard_cuts = 0
        self._count = self._sum = self._max = 0
        self._min = None

    def _record(self, lengths: list[int]) -> None:
        if lengths:
            self._count += len(lengths)
            self._sum += sum(lengths)
            self._max = max(self._max, max(lengths))
            self._min = min(lengths) if self._min is None else min(self._min, min(lengths))

    def feed(self, tokens: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add a piece; return the tokens and lengths of the chunks it completes."""
        buf = np.concatenate([self._tokens, tokens]) if self._tokens.size else tokens
        fl = np.concatenate([self._flags, flags]) if self._flags.size else flags
        lengths = []
        pos, L, lo = 0, self.max_length, self.min_length
        while buf.size - pos >= L:
            nz = np.flatnonzero(fl[pos + lo - 1 : pos + L])
            if nz.size:
                cut = lo + int(nz[-1])
                self.sentence_cuts += 1
            else:
                cut = L
                self.hard_cuts += 1
            lengths.append(cut)
            pos += cut
        self._tokens, self._flags = buf[pos:], fl[pos:]
        self._record(lengths)
        return buf[:pos], np.asarray(lengths, dtype=np.int64)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The final (possibly short) chunk, if any tokens remain."""
        tokens, self._tokens = self._tokens, self._tokens[:0]
        self._flags = self._flags[:0]
        lengths = np.asarray([tokens.size] if tokens.size else [], dtype=np.int64)
        self._record(lengths.tolist())
        return tokens, lengths

    def stats(self) -> dict:
        n = self._count
        return {
            "chunks": n,
            "max_length": self.max_length,
            "min_sentence_cut_length": self.min_length,
            "sentence_cuts": self.sentence_cuts,
            "hard_cuts": self.hard_cuts,
            "chunk_length_min": self._min or 0,
            "chunk_length_mean": self._sum / n if n else 0.0,
            "chunk_length_max": self._max,
            "fill": self._sum / (n * self.max_length) if n else 0.0,
        }
