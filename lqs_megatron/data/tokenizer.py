"""Local Hugging Face tokenizers: loading with clear errors, and the ids the pipeline needs.

A ``TOKENIZER_DIR`` is anything ``transformers.AutoTokenizer.from_pretrained`` loads
from a local path. Nothing is fetched from a hub: a missing path is an error, not a
download.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from lqs_megatron.errors import LQSError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "tokenizer_config.json",
)
"""A directory with none of these holds no tokenizer (checked before transformers guesses at it)."""


@lru_cache(maxsize=8)
def load_tokenizer(path: str | os.PathLike, require_eos: bool = True):
    """Load a local tokenizer directory; raise :class:`LQSError` when it is missing or unusable."""
    path = str(path)
    if not os.path.isdir(path):
        raise LQSError(f"tokenizer directory {path!r} does not exist (a local directory is required; no hub access)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        found = ", ".join(sorted(os.listdir(path))[:10]) or "nothing"
        raise LQSError(
            f"tokenizer directory {path!r} holds no tokenizer files (expected tokenizer.json, or tokenizer.model / "
            f"vocab.json + merges.txt / vocab.txt with tokenizer_config.json; found: {found})"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types here
        raise LQSError(f"cannot load a tokenizer from {path!r}: {type(e).__name__}: {e}") from None
    if require_eos and tok.eos_token_id is None:
        raise LQSError(f"tokenizer {path!r} has no EOS token; documents need one (set eos_token in its config)")
    return tok


def vocab_size(tok) -> int:
    """The number of ids the tokenizer can produce (base vocabulary plus added tokens)."""
    return len(tok)


class BatchEncoder:
    """Batch encoding and decoding with exactly the ids of ``tok(text).input_ids`` / ``tok.decode``.

    For a fast tokenizer (one with a ``tokenizer.json`` backend) the batch goes straight to
    the Rust backend (``encode_batch_fast``: no offsets, no Python object per token); any
    truncation or padding saved in ``tokenizer.json`` is switched off, as ``tok(text)``
    does. Other tokenizers go through ``tok(texts)``. Picklable: a worker process reloads
    the directory (or inherits it when forked).

    Sentencepiece-style tokenizers (Llama-2, Mistral, ``lqs train-tokenizer``) normalise with
    exactly ``Prepend("▁")`` then ``Replace(" ", "▁")``. The Rust normaliser tracks character
    alignments for that, a quarter of the encoding time; :meth:`encode` (which needs no
    offsets) applies the same two steps with ``str.replace`` instead and encodes with the
    normaliser off: the same ids. Texts that are empty or contain a special token's string
    (split out *before* normalisation by the backend) take the normal path.

    When the tokenizer also qualifies for the word cache (``data/word_cache.py``: BPE whose
    pieces never hold ``▁`` after another character, as sentencepiece trains them), batches
    whose texts are all plain go through :class:`~lqs_megatron.data.word_cache.WordCacheEncoder`
    instead: each distinct word is encoded once per process, the same ids again.
    ``word_cache=False`` turns that off.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike, word_cache: bool = True):
        self.tokenizer_dir = str(tokenizer_dir)
        self.use_word_cache = word_cache
        self._backend = None
        self._raw = None  # the backend without its normaliser, when the fast path applies
        self._words = None  # the WordCacheEncoder, when it applies
        self._specials: tuple[str, ...] = ()
        self._loaded = False

    def __getstate__(self) -> dict:
        return {"tokenizer_dir": self.tokenizer_dir, "word_cache": self.use_word_cache}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer_dir"], state.get("word_cache", True))

    @property
    def tok(self):
        return load_tokenizer(self.tokenizer_dir)

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` (a private copy), or ``None`` for a slow tokenizer."""
        if not self._loaded:
            bt = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
            if bt is not None:
                from tokenizers import Tokenizer

                bt = Tokenizer.from_str(bt.to_str())
                bt.no_truncation()
                bt.no_padding()
                self._raw, self._specials = _without_sentencepiece_normalizer(bt)
                if self._raw is not None and self.use_word_cache:
                    from lqs_megatron.data.word_cache import WordCacheEncoder, word_cache_spec

                    spec = word_cache_spec(self._raw)
                    if spec is not None:
                        self._words = WordCacheEncoder(self._raw, *spec)
            self._backend, self._loaded = bt, True
        return self._backend

    @property
    def word_cache(self):
        """The :class:`~lqs_megatron.data.word_cache.WordCacheEncoder`, or ``None`` where it does not apply."""
        self.backend  # noqa: B018 - loads
        return self._words

    def _plain(self, text: str) -> bool:
        """Whether the fast paths may encode ``text``: not empty, no special token's string in it."""
        return bool(text) and not any(sp in text for sp in self._specials)

    def encode_flat(
        self, texts: list[str], eos: int, max_length: int | None
    ) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """``(tokens int32, lengths, truncated, dropped)`` of the texts, EOS appended and cut as
        ``lqs tokenize`` does, through the word cache; ``None`` when the cache does not apply to
        this tokenizer or batch (then use :meth:`encode`)."""
        words = self.word_cache
        if words is None or not texts or not all(map(self._plain, texts)):
            return None
        return words.encode_flat(texts, True, eos, max_length or 0)

    @property
    def eos_token_id(self) -> int:
        return int(self.tok.eos_token_id)

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """``[tok(t, add_special_tokens=...).input_ids for t in texts]``, batched."""
        if not texts:
            return []
        bt = self.backend
        if bt is None:
            return [list(x) for x in self.tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]
        texts = list(texts)
        if self._raw is None:
            return _encode(bt, texts, add_special_tokens)
        plain = [self._plain(t) for t in texts]
        if self._words is not None and all(plain):
            return self._words.encode(texts, add_special_tokens)
        pre = ["▁" + t.replace(" ", "▁") for t, ok in zip(texts, plain) if ok]
        rest = [t for t, ok in zip(texts, plain) if not ok]
        fast_ids = iter(_encode(self._raw, pre, add_special_tokens))
        slow_ids = iter(_encode(bt, rest, add_special_tokens))
        return [next(fast_ids) if ok else next(slow_ids) for ok in plain]

    def encode_with_offsets(self, texts: list[str]) -> list:
        """``tokenizers.Encoding`` objects (ids plus character offsets); needs a fast tokenizer."""
        bt = self.backend
        if bt is None:
            raise LQSError(
                f"tokenizer {self.tokenizer_dir!r} is not a fast tokenizer (no tokenizer.json); "
                "chunk mode needs token offsets"
            )
        return bt.encode_batch(list(texts), add_special_tokens=True)

    def decode(self, seqs: list) -> list[str]:
        """``[tok.decode(s, skip_special_tokens=True) for s in seqs]``, batched."""
        lists = [s.tolist() if hasattr(s, "tolist") else list(s) for s in seqs]
        return list(self.tok.batch_decode(lists, skip_special_tokens=True))


_SENTENCEPIECE_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ],
}


def _without_sentencepiece_normalizer(bt) -> tuple[object | None, tuple[str, ...]]:
    """``(copy of bt without its normaliser, special-token strings)`` when ``bt`` normalises exactly
    as sentencepiece does and has no pre-tokenizer; ``(None, ())`` otherwise."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(bt.to_str())
    if spec.get("normalizer") != _SENTENCEPIECE_NORMALIZER or spec.get("pre_tokenizer") is not None:
        return None, ()
    raw = Tokenizer.from_str(bt.to_str())
    raw.normalizer = None
    return raw, tuple(t["content"] for t in spec.get("added_tokens", []) if t.get("content"))


def _encode(bt, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    fast = getattr(bt, "encode_batch_fast", bt.encode_batch)
    return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]
