"""Word-cached encoding for sentencepiece-style BPE tokenizers: the ids of whole-text encoding, faster.

A sentencepiece-style tokenizer (Llama-2, Mistral, ``lqs train-tokenizer``) normalises a text to
``"▁" + text.replace(" ", "▁")`` and runs BPE over the whole result (no pre-tokenizer). Cut that
string before every ``▁`` that follows a non-``▁`` character: the *segments* ``▁▁foo``, ``▁bar``.
When no vocabulary piece contains ``▁`` after a non-``▁`` character (every piece matches
``▁*[^▁]*``: sentencepiece's default ``split_by_whitespace`` training gives exactly that, with
or without whitespace-only pieces), no BPE merge can join the end of one segment to the start
of the next, and merges inside one segment never depend on its neighbours (BPE applies merges by
rank; a merge needs both symbols in the same segment). So the ids of the whole text are the
concatenation of each segment's ids, and a segment's ids can be cached: natural text repeats a
few tens of thousands of words, so almost every segment after the first megabytes is a cache hit
and the BPE runs only on new words.

:class:`WordCacheEncoder` drives the native cache (``lqs_megatron._C.WordCache``, in
``csrc/word_cache.cpp``): the cache lists the batch's uncached segments, the tokenizer's Rust
backend encodes them (normaliser off: they are normalised already), and the cache assembles the
whole batch into one flat token array with EOS and truncation, no Python object per token. The
cache is cleared whenever it outgrows ``max_bytes`` (64 MiB by default, per process).

:func:`word_cache_spec` decides whether a tokenizer qualifies; anything else (byte-level BPE,
Unigram, other normalisers or pre-tokenizers, dropout) keeps the backend's own encoding. Texts
that contain a special token's string are encoded by the backend too (it splits those out first).
"""

from __future__ import annotations

import json
import threading

import numpy as np

MARK = "▁"
DEFAULT_MAX_BYTES = 64 << 20


def word_cache_spec(raw, spec: dict | None = None) -> tuple[list[int], list[int]] | None:
    """``(prefix ids, suffix ids)`` that the post-processor adds, when the word cache gives exactly
    the tokenizer's ids; ``None`` when it does not apply.

    ``raw`` is the backend of a tokenizer that normalises exactly as sentencepiece does, with the
    normaliser removed (``BatchEncoder``'s fast path checks that and builds it); this checks the
    model, the vocabulary and the post-processor. ``spec``: the parsed ``tokenizer.json``, when the
    caller has it (only the parts other than the normaliser are read).
    """
    if spec is None:
        spec = json.loads(raw.to_str())
    model = spec.get("model") or {}
    if spec.get("pre_tokenizer") is not None:
        return None
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0.0) or model.get("ignore_merges"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    vocab = model.get("vocab") or {}
    if MARK not in vocab or any(MARK in piece.lstrip(MARK) for piece in vocab):
        return None
    if any(t.get("normalized") for t in spec.get("added_tokens", [])):
        return None
    post = spec.get("post_processor")
    if post is not None and post.get("type") != "TemplateProcessing":
        return None
    probe = MARK + "a"
    core = raw.encode(probe, add_special_tokens=False).ids
    full = raw.encode(probe, add_special_tokens=True).ids
    for k in range(len(full) - len(core) + 1):
        if full[k : k + len(core)] == core:
            return full[:k], full[k + len(core) :]
    return None


class WordCacheEncoder:
    """Encodes batches of texts through the native word cache (see the module docstring).

    ``raw`` is the backend with its normaliser removed; ``prefix``/``suffix`` the ids the
    post-processor adds around a text (from :func:`word_cache_spec`). Thread-safe: one batch at a
    time goes through the cache's list-misses / fill / assemble protocol.
    """

    def __init__(self, raw, prefix: list[int], suffix: list[int], max_bytes: int = DEFAULT_MAX_BYTES):
        from lqs_megatron import _C

        self._raw, self.prefix, self.suffix = raw, list(prefix), list(suffix)
        self._cache = _C.WordCache(int(max_bytes))
        self._lock = threading.Lock()

    @property
    def cache(self):
        """The native cache (``size``, ``bytes``, ``max_bytes``, ``clear()``)."""
        return self._cache

    def encode_flat(
        self, texts: list[str], add_special_tokens: bool = True, eos: int = -1, max_length: int = 0
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(tokens int32, lengths int64, truncated, dropped)``: the texts' ids concatenated; per
        text EOS appended unless it already ends with it (``eos < 0``: none), then cut to
        ``max_length`` tokens with EOS kept last (``0``: no limit)."""
        pre, suf = (self.prefix, self.suffix) if add_special_tokens else ([], [])
        with self._lock:
            missing = self._cache.misses(texts)
            if missing:
                try:
                    encs = self._raw.encode_batch_fast(missing, add_special_tokens=False)
                except BaseException:
                    self._cache.abandon()  # forget the listed segments: the next batch starts clean
                    raise
                self._cache.fill([e.ids for e in encs])
            return self._cache.assemble(texts, pre, suf, int(eos), int(max_length or 0))

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """The texts' ids as lists (what ``tok(text).input_ids`` gives)."""
        tokens, lengths, _, _ = self.encode_flat(texts, add_special_tokens)
        flat = tokens.tolist()
        out, start = [], 0
        for n in lengths.tolist():
            out.append(flat[start : start + n])
            start += n
        return out
