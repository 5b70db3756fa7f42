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


@lru_cache(maxsize=8)
def load_tokenizer(path: str | os.PathLike, require_eos: bool = True):
    """Load a local tokenizer directory; raise :class:`LQSError` when it is missing or unusable."""
    path = str(path)
    if not os.path.isdir(path):
        raise LQSError(f"tokenizer directory {path!r} does not exist (a local directory is required; no hub access)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer  # noqa: PLC0415

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

    When ``gigatoken`` is installed and gives exactly the backend's ids for this tokenizer
    (``data/gigatoken_backend.py`` checks that when the tokenizer loads: byte-level BPE such as
    GPT-2's, Llama-3's and Qwen's, and the sentencepiece style above), plain texts go through it
    first, the fastest of the three. ``gigatoken=False`` turns that off. :attr:`encoding` names
    the path plain texts take.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike, word_cache: bool = True, gigatoken: bool = True):
        self.tokenizer_dir = str(tokenizer_dir)
        self.use_word_cache, self.use_gigatoken = word_cache, gigatoken
        self._backend = None
        self._raw = None  # the backend without its normaliser, when the fast path applies
        self._words = None  # the WordCacheEncoder, when it applies
        self._giga = None  # the GigatokenEncoder, when it applies
        self._specials: tuple[str, ...] = ()
        self._special_set = None  # _C.SpecialStrings of _specials, built on first use
        self._loaded = False

    def __getstate__(self) -> dict:
        return {"tokenizer_dir": self.tokenizer_dir, "word_cache": self.use_word_cache, "gigatoken": self.use_gigatoken}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer_dir"], state.get("word_cache", True), state.get("gigatoken", True))

    @property
    def tok(self):
        return load_tokenizer(self.tokenizer_dir)

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` (a private copy), or ``None`` for a slow tokenizer."""
        if not self._loaded:
            bt = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
            if bt is not None:
                from tokenizers import Tokenizer  # noqa: PLC0415

                bt = Tokenizer.from_str(bt.to_str())
                bt.no_truncation()
                bt.no_padding()
                self._raw, self._specials = _without_sentencepiece_normalizer(bt)
                if self._raw is not None and self.use_word_cache:
                    from lqs_megatron.data.word_cache import WordCacheEncoder, word_cache_spec  # noqa: PLC0415

                    spec = word_cache_spec(self._raw)
                    if spec is not None:
                        self._words = WordCacheEncoder(self._raw, *spec)
                if self.use_gigatoken:
                    from lqs_megatron.data.gigatoken_backend import GigatokenEncoder, gigatoken_spec  # noqa: PLC0415

                    spec = gigatoken_spec(bt)
                    if spec is not None:
                        self._giga = GigatokenEncoder(*spec)
                        self._specials = _added_token_strings(bt)
            self._backend, self._loaded = bt, True
        return self._backend

    @property
    def word_cache(self):
        """The :class:`~lqs_megatron.data.word_cache.WordCacheEncoder`, or ``None`` where it does not apply."""
        self.backend  # noqa: B018 - loads
        return self._words

    @property
    def gigatoken(self):
        """The :class:`~lqs_megatron.data.gigatoken_backend.GigatokenEncoder`, or ``None`` where it does not apply."""
        self.backend  # noqa: B018 - loads
        return self._giga

    @property
    def encoding(self) -> str:
        """How plain texts are encoded: ``gigatoken``, ``word cache`` or ``backend`` (the tokenizer's own)."""
        if self.gigatoken is not None:
            return "gigatoken"
        return "word cache" if self.word_cache is not None else "backend"

    def _fast(self):
        """The fastest encoder that applies (gigatoken, then the word cache), or ``None``."""
        self.backend  # noqa: B018 - loads
        return self._giga or self._words

    def _plain(self, texts: list[str]) -> list[bool]:
        """Per text, whether the fast paths may encode it: not empty, no added token's string in it
        (the backend splits those out first; ``_C.SpecialStrings`` scans for all of them at once)."""
        if self._special_set is None:
            from lqs_megatron import _C  # noqa: PLC0415

            self._special_set = _C.SpecialStrings(list(self._specials))
        return self._special_set.plain(texts)

    def encode_flat(
        self, texts: list[str], eos: int, max_length: int | None
    ) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """``(tokens int32, lengths, truncated, dropped)`` of the texts, EOS appended and cut as
        ``lqs tokenize`` does, through gigatoken or the word cache; ``None`` when neither applies to
        this tokenizer or batch (then use :meth:`encode`)."""
        fast = self._fast()
        if fast is None or not texts or not all(self._plain(texts)):
            return None
        return fast.encode_flat(texts, True, eos, max_length or 0)

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
        fast = self._giga or self._words
        if self._raw is None and fast is None:
            return _encode(bt, texts, add_special_tokens)
        plain = self._plain(texts)
        if fast is not None and all(plain):
            return fast.encode(texts, add_special_tokens)
        if self._raw is None:  # gigatoken for the plain texts, the backend for the others
            fast_ids = iter(fast.encode([t for t, ok in zip(texts, plain) if ok], add_special_tokens))
            slow_ids = iter(_encode(bt, [t for t, ok in zip(texts, plain) if not ok], add_special_tokens))
            return [next(fast_ids) if ok else next(slow_ids) for ok in plain]
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
    import json  # noqa: PLC0415

    from tokenizers import Tokenizer  # noqa: PLC0415

    spec = json.loads(bt.to_str())
    if spec.get("normalizer") != _SENTENCEPIECE_NORMALIZER or spec.get("pre_tokenizer") is not None:
        return None, ()
    raw = Tokenizer.from_str(bt.to_str())
    raw.normalizer = None
    return raw, tuple(t["content"] for t in spec.get("added_tokens", []) if t.get("content"))


def _added_token_strings(bt) -> tuple[str, ...]:
    """The contents of the tokenizer's added tokens (the backend splits them out of a text first)."""
    import json  # noqa: PLC0415

    return tuple(t["content"] for t in json.loads(bt.to_str()).get("added_tokens", []) if t.get("content"))


def _encode(bt, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    fast = getattr(bt, "encode_batch_fast", bt.encode_batch)
    return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]
