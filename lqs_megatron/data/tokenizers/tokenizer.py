"""Local Hugging Face tokenizers: loading with clear errors, and the ids the pipeline needs.

A ``TOKENIZER_DIR`` is anything ``transformers.AutoTokenizer.from_pretrained`` loads
from a local path. Nothing is fetched from a hub: a missing path is an error, not a
download.

One exception to ``AutoTokenizer``: a directory whose ``tokenizer.json`` is described by no
specific class (``tokenizer_config.json`` names ``PreTrainedTokenizerFast``,
``TokenizersBackend`` or nothing) loads as exactly that ``tokenizer.json``. ``AutoTokenizer``
would take the class from a ``config.json`` beside it (a model directory): under transformers
5.x a ``tokenizer.json`` saved into a Qwen2 model directory loads as ``Qwen2Tokenizer``, which
rebuilds its own pre-tokenizer and drops every space ("The quick brown fox" ->
"Thequickbrownfox") while the vocabulary, and so the fingerprint, stays the same.

:func:`check_round_trip` is the guard for whatever a tokenizer does to text: ``tokenize``,
``tokenize-target`` and ``train-tokenizer`` decode the encoding of the first documents and
stop at the first one that does not come back (up to the tokenizer's own normalisation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
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

TOKENIZER_DIR_FILES = (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "merges.txt", "*.jinja")
"""Every file a saved tokenizer directory may hold (how an earlier tokenizer output is recognised)."""


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
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cls = PreTrainedTokenizerFast if _plain_tokenizer_json(path) else AutoTokenizer
    try:
        tok = cls.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types here
        raise LQSError(f"cannot load a tokenizer from {path!r}: {type(e).__name__}: {e}") from None
    if require_eos and tok.eos_token_id is None:
        raise LQSError(f"tokenizer {path!r} has no EOS token; documents need one (set eos_token in its config)")
    return tok


_GENERIC_CLASSES = (None, "", "PreTrainedTokenizerFast", "TokenizersBackend")


def _plain_tokenizer_json(path: str) -> bool:
    """True when ``path`` holds a ``tokenizer.json`` that no specific tokenizer class describes (see the module
    docstring): it must load as itself, whatever model a ``config.json`` beside it names."""
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return False
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            cls = json.load(f).get("tokenizer_class")
    except FileNotFoundError:
        cls = None
    except (ValueError, AttributeError):
        return False  # let AutoTokenizer report the broken file
    return cls in _GENERIC_CLASSES


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

    When the tokenizer also qualifies for the word cache (``data/tokenizers/word_cache.py``: BPE whose
    pieces never hold ``▁`` after another character, as sentencepiece trains them), batches
    whose texts are all plain go through :class:`~lqs_megatron.data.tokenizers.word_cache.WordCacheEncoder`
    instead: each distinct word is encoded once per process, the same ids again.
    ``word_cache=False`` turns that off.

    When ``gigatoken`` is installed and gives exactly the backend's ids for this tokenizer
    (``data/tokenizers/gigatoken_backend.py`` checks that when the tokenizer loads: byte-level BPE such as
    GPT-2's, Llama-3's and Qwen's, and the sentencepiece style above), plain texts go through it
    first, the fastest of the three. ``gigatoken=False`` turns that off. :attr:`encoding` names
    the path plain texts take. These encoders are built once per process for each directory and
    set of flags (``tokenizer.json`` parsed once) and shared by every ``BatchEncoder`` of it.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike, word_cache: bool = True, gigatoken: bool = True):
        self.tokenizer_dir = str(tokenizer_dir)
        self.use_word_cache, self.use_gigatoken = word_cache, gigatoken

    def __getstate__(self) -> dict:
        return {"tokenizer_dir": self.tokenizer_dir, "word_cache": self.use_word_cache, "gigatoken": self.use_gigatoken}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokenizer_dir"], state.get("word_cache", True), state.get("gigatoken", True))

    @property
    def tok(self):
        return load_tokenizer(self.tokenizer_dir)

    @property
    def _paths(self) -> _Paths:
        return _load_paths(self.tokenizer_dir, self.use_word_cache, self.use_gigatoken)

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` (a private copy), or ``None`` for a slow tokenizer."""
        return self._paths.backend

    @property
    def word_cache(self):
        """The :class:`~lqs_megatron.data.tokenizers.word_cache.WordCacheEncoder`, or ``None`` where it does not
        apply."""
        return self._paths.words

    @property
    def gigatoken(self):
        """The :class:`~lqs_megatron.data.tokenizers.gigatoken_backend.GigatokenEncoder`, or ``None`` where it does
        not apply."""
        return self._paths.giga

    @property
    def encoding(self) -> str:
        """How plain texts are encoded: ``gigatoken``, ``word cache`` or ``backend`` (the tokenizer's own)."""
        paths = self._paths
        return "gigatoken" if paths.giga is not None else "word cache" if paths.words is not None else "backend"

    def encode_flat(
        self, texts: list[str], eos: int, max_length: int | None
    ) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """``(tokens int32, lengths, truncated, dropped)`` of the texts, EOS appended and cut as
        ``lqs tokenize`` does, through gigatoken or the word cache; ``None`` when neither applies to
        this tokenizer or batch (then use :meth:`encode`)."""
        paths = self._paths
        fast = paths.giga or paths.words
        if fast is None or not texts or not all(paths.plain(texts)):
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
        paths = self._paths
        fast = paths.giga or paths.words
        if fast is None and paths.raw is None:
            return _encode(bt, texts, add_special_tokens)
        plain = paths.plain(texts)
        if fast is not None and all(plain):
            return fast.encode(texts, add_special_tokens)
        ok_texts = [t for t, ok in zip(texts, plain) if ok]
        if paths.giga is not None:
            fast_ids = iter(paths.giga.encode(ok_texts, add_special_tokens))
        else:  # the sentencepiece normaliser as str.replace (see the class docstring)
            fast_ids = iter(_encode(paths.raw, ["▁" + t.replace(" ", "▁") for t in ok_texts], add_special_tokens))
        slow_ids = iter(_encode(bt, [t for t, ok in zip(texts, plain) if not ok], add_special_tokens))
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


ROUND_TRIP_DOCUMENTS = 64
"""Documents :func:`check_round_trip` checks at most (the first ones of the input)."""
ROUND_TRIP_CHARS = 1 << 18
"""Characters :func:`check_round_trip` checks at most."""

_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def _normaliser_steps(tok) -> list[str]:
    """The documented text changes of a fast tokenizer's normaliser, pre-tokeniser and decoder, as step names:
    a Unicode form, ``Lowercase``, ``StripAccents``, ``Strip``, ``Whitespace`` (runs collapsed and ends
    stripped: sentencepiece's ``Precompiled`` rule, which also applies NFKC) and ``LeadingSpace``
    (a sentencepiece ``Metaspace`` / ``Strip`` decoder drops the first space of a text)."""
    bt = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if bt is None:
        return []
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "Strip" and "content" in node:  # the decoder's: the first space(s) of a text
                found.append("LeadingSpace")
            elif kind in _UNICODE_FORMS or kind in ("Lowercase", "StripAccents", "Strip"):
                found.append(kind)
            elif kind == "Precompiled":
                found.extend(["NFKC", "Whitespace"])
            elif kind == "BertNormalizer":
                found.extend(["Whitespace"] + (["Lowercase", "StripAccents"] if node.get("lowercase") else []))
            elif kind == "Metaspace":
                found.append("LeadingSpace")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for component in (bt.normalizer, bt.pre_tokenizer, bt.decoder):
        if component is not None:
            walk(json.loads(component.__getstate__()))
    return list(dict.fromkeys(found))


def _canonical(text: str, steps: list[str]) -> str:
    import unicodedata

    for step in steps:
        if step in _UNICODE_FORMS:
            text = unicodedata.normalize(step, text)
        elif step == "Lowercase":
            text = text.lower()
        elif step == "StripAccents":
            text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
        elif step == "Strip":
            text = text.strip()
        elif step == "Whitespace":
            text = " ".join(text.split())
        elif step == "LeadingSpace":
            text = text.removeprefix(" ")
    return text


def _excerpt(before: str, after: str, width: int = 30) -> tuple[str, str]:
    """The two texts around their first difference (``...`` where cut)."""
    i = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    lo = max(0, i - width // 2)

    def cut(t: str) -> str:
        return ("..." if lo else "") + t[lo : lo + width] + ("..." if lo + width < len(t) else "")

    return cut(before), cut(after)


def check_round_trip(tok, samples: Iterable[tuple[str, str]], tokenizer_dir: str | os.PathLike) -> dict:
    """``decode(encode(text))`` against ``text`` for the first documents of ``samples`` (``(where, text)`` pairs,
    at most :data:`ROUND_TRIP_DOCUMENTS` documents and :data:`ROUND_TRIP_CHARS` characters), special tokens
    neither added nor skipped. A text that comes back changed beyond the tokenizer's documented normalisation
    (:func:`_normaliser_steps`: a Unicode form, lower case, whitespace runs, a leading space) is an
    :class:`LQSError` naming the tokenizer, where the text is and an excerpt before and after.

    Returns the record for ``stats.json``: ``{"documents", "chars", "exact", "normalisation"}`` (``exact``:
    documents that came back unchanged; ``normalisation``: the steps allowed)."""
    import re

    steps = _normaliser_steps(tok)
    added = sorted({t.content for t in tok.added_tokens_decoder.values() if t.content}, key=len, reverse=True)
    split = re.compile("|".join(map(re.escape, added))) if added else None
    n = chars = exact = 0
    for where, text in samples:
        if n >= ROUND_TRIP_DOCUMENTS or chars >= ROUND_TRIP_CHARS:
            break
        text = text[: ROUND_TRIP_CHARS - chars]
        same = True
        # the text between added tokens' strings (a chat template's markers): the backend splits those out
        # first and normalises each piece alone, so only the pieces are expected to come back
        for piece in split.split(text) if split else [text]:
            if not piece:
                continue
            back = tok.decode(
                tok(piece, add_special_tokens=False)["input_ids"],
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
            same = same and back == piece
            if back == piece or _canonical(back, steps) == _canonical(piece, steps):
                continue
            before, after = _excerpt(piece, back)
            raise LQSError(
                f"tokenizer {tokenizer_dir} loses text: {where} comes back changed from decode(encode(text)): "
                f"{before!r} -> {after!r} (normalisation allowed: {', '.join(steps) or 'none'}); a lossy tokenizer "
                "would corrupt the whole corpus (is it a tokenizer.json that a model directory's config.json "
                "loads as another class?)"
            )
        n, chars, exact = n + 1, chars + len(text), exact + same
    return {"documents": n, "chars": chars, "exact": exact, "normalisation": steps}


_SENTENCEPIECE_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ],
}


@dataclass(frozen=True)
class _Paths:
    """A tokenizer's encoders, built once per process by :func:`_load_paths`."""

    backend: object | None
    """The ``tokenizers.Tokenizer`` (a copy, truncation and padding off), ``None`` for a slow tokenizer."""
    raw: object | None = None
    """The backend without its sentencepiece normaliser (the ``str.replace`` fast path), where that applies."""
    words: object | None = None
    """The :class:`~lqs_megatron.data.tokenizers.word_cache.WordCacheEncoder`, where it applies."""
    giga: object | None = None
    """The :class:`~lqs_megatron.data.tokenizers.gigatoken_backend.GigatokenEncoder`, where it applies."""
    specials: object | None = None
    """``_C.SpecialStrings`` of the added tokens' strings (the backend splits them out of a text first)."""

    def plain(self, texts: list[str]) -> list[bool]:
        """Per text, whether the fast paths may encode it: not empty, holding no added token's string."""
        return self.specials.plain(texts)


@lru_cache(maxsize=8)
def _load_paths(tokenizer_dir: str, word_cache: bool, gigatoken: bool) -> _Paths:
    """The encoders of a tokenizer directory, once per process: ``tokenizer.json`` parsed once, the
    fast paths checked once (a forked worker inherits them from the main process)."""
    tok = load_tokenizer(tokenizer_dir)
    bt = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if bt is None:
        return _Paths(None)
    from tokenizers import Tokenizer

    from lqs_megatron import _C

    if bt.truncation is not None or bt.padding is not None:  # a copy without them, as tok(text) encodes
        bt = Tokenizer.from_str(bt.to_str())
        bt.no_truncation()
        bt.no_padding()
    spec = _light_spec(bt)
    specials = _C.SpecialStrings([t["content"] for t in spec.get("added_tokens", []) if t.get("content")])
    if gigatoken:
        from lqs_megatron.data.tokenizers.gigatoken_backend import GigatokenEncoder, gigatoken_spec

        found = gigatoken_spec(bt, spec)
        if found is not None:
            return _Paths(bt, giga=GigatokenEncoder(*found), specials=specials)
    if spec.get("normalizer") != _SENTENCEPIECE_NORMALIZER or spec.get("pre_tokenizer") is not None:
        return _Paths(bt, specials=specials)
    raw = Tokenizer.from_str(bt.to_str())
    raw.normalizer = None
    words = None
    if word_cache:
        from lqs_megatron.data.tokenizers.word_cache import WordCacheEncoder, word_cache_spec

        spec["model"]["vocab"] = bt.get_vocab(with_added_tokens=False)
        found = word_cache_spec(raw, spec)
        words = WordCacheEncoder(raw, *found) if found is not None else None
    return _Paths(bt, raw=raw, words=words, specials=specials)


def _light_spec(bt) -> dict:
    """The parts of ``tokenizer.json`` the fast paths check, read from the components: parsing the
    whole JSON (vocabulary and merges) costs far more than these few fields."""

    def state(component):
        return None if component is None else json.loads(component.__getstate__())

    model = bt.model
    added = bt.get_added_tokens_decoder().values()
    return {
        "normalizer": state(bt.normalizer),
        "pre_tokenizer": state(bt.pre_tokenizer),
        "post_processor": state(bt.post_processor),
        "added_tokens": [{"content": t.content, "normalized": t.normalized, "special": t.special} for t in added],
        "model": {
            "type": type(model).__name__,
            **{k: getattr(model, k, None) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix")},
            **{k: getattr(model, k, None) for k in ("ignore_merges", "byte_fallback")},
        },
    }


def _encode(bt, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    fast = getattr(bt, "encode_batch_fast", bt.encode_batch)
    return [e.ids for e in fast(texts, add_special_tokens=add_special_tokens)]
