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

A document longer than :data:`BLOCK_CHARS` characters is split into blocks (after the last line
break in the second half of each block, else after its last space, else at the block size: linear
time) and Punkt runs on each block alone, in training and in splitting: Punkt's regular expressions
run under nltk's wall-clock limit (``nltk.redos``), which a multi-MB text exceeds. A block that still
hits the limit is logged and keeps only its line ends as boundaries: no splitter limit ends a run.
Shorter documents are split exactly as before.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator

import numpy as np

MIN_FILL = 0.5
"""A chunk ends at a sentence boundary only if it keeps at least this fraction of ``max_length``."""

BLOCK_CHARS = 1 << 16
"""Punkt sees at most this many characters at once (see the module docstring)."""

_NEWLINE = re.compile("\n")

logger = logging.getLogger(__name__)


def blocks(text: str, size: int = BLOCK_CHARS) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of at most ``size`` characters covering ``text``: each ends after
    the last line break in its second half, else after the last space there, else at ``size``."""
    start, n = 0, len(text)
    while n - start > size:
        lo, hi = start + size // 2, start + size
        stop = text.rfind("\n", lo, hi) + 1 or text.rfind(" ", lo, hi) + 1 or hi
        yield start, stop
        start = stop
    yield start, n


_warned: set[str] = set()


def _timed_out(what: str, n: int) -> None:
    """Log (once per process and kind) a block on which Punkt hit nltk's regex time limit."""
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "sentence splitter: nltk's regex time limit hit while %s a %d-character block; such blocks keep only "
            "their line ends as chunk boundaries (logged once)",
            what,
            n,
        )


def train_sentence_splitter(texts: Iterable[str], sample_chars: int = 2_000_000):
    """Train nltk's Punkt on texts until ``sample_chars`` characters are seen; return its parameters."""
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    seen = 0
    for text in texts:
        text = text[: max(sample_chars - seen, 0)]
        for a, b in blocks(text):
            try:
                trainer.train(text[a:b], finalize=False)
            except TimeoutError:
                _timed_out("training on", b - a)
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
        """Character gaps ``(lo, hi)``: the whitespace between two sentences (of one block), and the point after
        each line break."""
        gaps = []
        for a, b in blocks(text):
            try:
                spans = list(self.splitter.span_tokenize(text[a:b]))
            except TimeoutError:
                _timed_out("splitting", b - a)
                continue
            gaps += [(a + spans[k][1], a + spans[k + 1][0]) for k in range(len(spans) - 1)]
        gaps += [(m.end(), m.end()) for m in _NEWLINE.finditer(text)]
        return gaps

    def flags(self, text: str, encoding) -> np.ndarray:
        """uint8 per token: 1 where a chunk may end after that token (a ``tokenizers.Encoding``)."""
        flags = np.zeros(len(encoding.ids), dtype=np.uint8)
        gaps = np.asarray(self.gaps(text), dtype=np.int64).reshape(-1, 2)
        if not gaps.size or not flags.size:
            return flags
        lo, hi = gaps[:, 0], gaps[:, 1]
        starts, to_token = _char_to_token(encoding)
        # cut before the first token that starts inside the gap (so whitespace opens the next chunk), else
        # before the token holding the next sentence's first character; either only where that token holds
        # nothing of the text before the gap
        j_lo, j_hi = to_token(lo), to_token(hi)
        ok_lo = (j_lo > 0) & (starts[np.maximum(j_lo, 0)] >= lo)
        ok_hi = (lo < hi) & (j_hi > 0) & (starts[np.maximum(j_hi, 0)] >= lo)
        flags[np.where(ok_lo, j_lo, j_hi)[ok_lo | ok_hi] - 1] = 1
        return flags


def _char_to_token(encoding):
    """``(starts, to_token)``: each token's first character, and a vectorised ``encoding.char_to_token`` (the first
    token whose characters hold the position, -1 for none) for positions in an int64 array. Linear in the
    document: ``char_to_token`` scans the tokens from the start on every call, quadratic over a long document."""
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = np.flatnonzero(ends > starts)  # a token with no characters holds no position
    rs, re_ = starts[real], ends[real]
    if np.all(rs[1:] >= rs[:-1]) and np.all(re_[1:] >= re_[:-1]):

        def to_token(pos: np.ndarray) -> np.ndarray:
            k = np.searchsorted(re_, pos, side="right")  # the first real token ending after pos
            hit = k < len(real)
            hit[hit] &= rs[k[hit]] <= pos[hit]
            return np.where(hit, real[np.minimum(k, len(real) - 1)], -1) if len(real) else np.full(len(pos), -1)

    else:  # offsets out of order (an unusual normaliser): the tokenizer's own lookup

        def to_token(pos: np.ndarray) -> np.ndarray:
            found = (encoding.char_to_token(int(p)) for p in pos)
            return np.array([-1 if j is None else j for j in found], dtype=np.int64)

    return starts, to_token


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
