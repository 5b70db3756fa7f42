"""gigatoken as an optional encoding backend: the ids of ``tok(text).input_ids``, much faster.

`gigatoken <https://pypi.org/project/gigatoken/>`_ (MIT; ``pip install 'lqs_megatron[gigatoken]'``)
re-implements byte-level BPE (GPT-2, Llama-3, Qwen: regex pre-tokenizer + byte mapping) and
sentencepiece-style BPE with byte fallback (Llama-2, Mistral, ``lqs train-tokenizer``) in Rust,
loading the same ``tokenizer.json``; it is what Megatron-LM's ``preprocess_data_fast.py
--use-gigatoken`` runs. It encodes only the *model* part of a tokenizer: no post-processor
(BOS/EOS templates) and no special-token splitting.

:func:`gigatoken_spec` decides, when a tokenizer loads, whether gigatoken gives exactly the
backend's ids: the ``tokenizer.json`` must use only components whose semantics gigatoken
implements (BPE without dropout or word suffixes; no normaliser, NFC or sentencepiece's
``Prepend``/``Replace``; ``ByteLevel``, ``Metaspace`` and ``Split`` (isolated pieces) pre-tokenizers;
a post-processor that only adds fixed tokens around the text; no normalised added tokens behind a
normaliser), gigatoken must load it, and a set of corner strings (:data:`PROBE_TEXTS`: Unicode
categories the split regexes distinguish, contractions, digit runs, whitespace runs, newlines,
emoji and other non-BMP characters, combining marks, control characters, ``▁`` itself) must
encode to the same ids. The post-processor's fixed tokens become a prefix and a suffix added here.

:class:`GigatokenEncoder` then encodes batches with gigatoken (on its thread pool from the main
thread; one ``encode`` per text on a worker thread or in a worker process, which keeps
gigatoken's word cache across batches; threads take turns under a lock: a gigatoken tokenizer
used by two threads at once fails with "Already borrowed", and its ``encode`` holds the GIL, so
the lock costs no parallelism, where a tokenizer per thread cost its load and a cold cache
each) and assembles them natively (``_C.assemble_arrays`` / ``_C.assemble_rows``: prefix/suffix,
EOS, truncation, as the word cache does). Callers (``BatchEncoder``) hand it only *plain* texts:
not empty, holding no added token's string (the backend splits those out first, gigatoken does
not); the others take the backend.
"""

from __future__ import annotations

import json
import threading

import numpy as np

_NORMALIZERS = {"Sequence", "NFC", "Prepend", "Replace"}
_PRE_TOKENIZERS = {"Sequence", "ByteLevel", "Split", "Metaspace"}
_POST_PROCESSORS = {"Sequence", "TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing"}

PROBE_TEXTS = [
    "a",
    "Hello world",
    "Hello  world",
    " leading",
    "trailing ",
    "  two leading",
    "tabs\tand\ttabs",
    "line\nbreak",
    "crlf\r\nline",
    "blank\n\n\nlines",
    "  \n  \n",
    " \t\n\r\x0b\x0c ",
    "don't I'm we'll they've she'd it's",
    "DON'T I'M WE'LL",
    "O'Neil's rock'n'roll",
    "'s 't 're",
    "'Sup 'TIS I'Mgood 'LLama",
    "1 12 123 1234 12345 1234567890",
    "3.14159 -42 1e10 0x1F",
    "١٢٣ ٤٥٦ ½ ² Ⅻ ⅻ",
    "v1.2.3-rc4",
    "café naïve résumé",
    "e\u0301 a\u0308 n\u0303",
    "Åström Ωmega ǅungla ß İstanbul ﬁne",
    "日本語のテキスト、句読点。",
    "中文文本，标点符号！",
    "한국어 텍스트",
    "Ελληνικά κείμενα",
    "русский текст",
    "עברית ערבית عربي",
    "हिन्दी पाठ",
    "ไทย",
    "😀 😃😄 👩‍👩‍👧 🇫🇷 🏳️‍🌈",
    "\U0001d400\U0001d401 \U00020000",
    "\u00a0nbsp\u00a0 \u2009thin\u2009 \u3000ideo\u3000",
    "zero\u200bwidth\u200djoin",
    "\u2028\u2029\x85",
    "\x00\x01\x1f\x7f",
    "\ufffd\ufeff",
    "▁ ▁▁ a▁b ▁a",
    "~~~ ::: ->> /* */ <<= !== ...",
    "$€£¥₹ 100%",
    "#include <stdio.h>\nint main() {\n    return 0;\n}\n",
    "    indented\n        more\n",
    "x" * 300,
    "word " * 60,
    "https://example.com/a?b=c&d=e#f",
    "email@example.com",
    "CamelCaseWord snake_case_word",
    "\u0000\u0000",
    "ÿĉĠĊ",
    "<",
    "|",
    "<|",
    "|>",
    "< s >",
    "Mixed123Numbers456",
    "a1b2c3",
    "   ",
]


def gigatoken_available() -> bool:
    try:
        import gigatoken  # noqa: F401
    except ImportError:
        return False
    return True


def _types(component) -> set[str]:
    """The ``type`` of a tokenizer.json component and of everything nested in it."""
    return {c.get("type", "?") for c in _components(component)}


def _components(component) -> list[dict]:
    """A tokenizer.json component and everything nested in it."""
    if component is None:
        return []
    out = [component]
    for key in ("normalizers", "pretokenizers", "processors"):
        for sub in component.get(key) or []:
            out += _components(sub)
    return out


def _structure_ok(spec: dict) -> bool:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0.0):
        return False
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return False
    normalizer = spec.get("normalizer")
    if not _types(normalizer) <= _NORMALIZERS or not _types(spec.get("pre_tokenizer")) <= _PRE_TOKENIZERS:
        return False
    if not _types(spec.get("post_processor")) <= _POST_PROCESSORS:
        return False
    for c in _components(spec.get("pre_tokenizer")):  # splits that keep every piece, as gigatoken does
        if c.get("type") == "Split" and (c.get("behavior") != "Isolated" or c.get("invert")):
            return False
    return not (normalizer is not None and any(t.get("normalized") for t in spec.get("added_tokens", [])))


def _affixes(bt) -> tuple[list[int], list[int]] | None:
    """``(prefix, suffix)``: the ids the post-processor adds around a text, when that is all it does."""
    found = None
    for probe in ("a", "Hello world", "x y\nz"):
        core = bt.encode(probe, add_special_tokens=False).ids
        full = bt.encode(probe, add_special_tokens=True).ids
        k = next((k for k in range(len(full) - len(core) + 1) if full[k : k + len(core)] == core), None)
        if k is None or (found is not None and found != (full[:k], full[k + len(core) :])):
            return None
        found = (full[:k], full[k + len(core) :])
    return found


def gigatoken_spec(bt, spec: dict | None = None) -> tuple[object, list[int], list[int]] | None:
    """``(gigatoken Tokenizer, prefix ids, suffix ids)`` when gigatoken gives exactly the ids of the
    ``tokenizers.Tokenizer`` ``bt`` (truncation and padding off); ``None`` when it does not apply
    (gigatoken missing, a component it does not implement, a probe string that differs).
    ``spec``: the parsed ``tokenizer.json`` (or the parts of it :func:`_structure_ok` reads), when
    the caller has it."""
    if not gigatoken_available():
        return None
    import gigatoken

    spec_str = bt.to_str()
    spec = json.loads(spec_str) if spec is None else spec
    if not _structure_ok(spec):
        return None
    try:
        gtok = gigatoken.Tokenizer.from_json(spec_str)
        got = gtok.encode_batch_list(PROBE_TEXTS, parallel=False)
    except Exception:
        return None
    specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("content")]
    probe = [t for t in PROBE_TEXTS if not any(s in t for s in specials)]
    want = {t: e.ids for t, e in zip(probe, bt.encode_batch(probe, add_special_tokens=False))}
    if any(t in want and list(g) != want[t] for t, g in zip(PROBE_TEXTS, got)):
        return None
    affixes = _affixes(bt)
    if affixes is None:
        return None
    return gtok, *affixes


def _flat(rows) -> tuple[np.ndarray, np.ndarray]:
    """(ids, int64 row offsets) of gigatoken's awkward array of rows, without a copy where possible."""
    import awkward as ak

    layout = rows.layout
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data).astype(np.int64, copy=False)
        ids = np.asarray(layout.content.data)
        if offsets.size and offsets[0] != 0:  # a view into a larger buffer
            ids, offsets = ids[offsets[0] : offsets[-1]], offsets - offsets[0]
        return ids[: offsets[-1]] if offsets.size else ids[:0], offsets
    counts = np.asarray(ak.num(rows, axis=1), dtype=np.int64)
    return np.asarray(ak.flatten(rows)), np.concatenate([[0], np.cumsum(counts)])


class GigatokenEncoder:
    """Encodes batches of plain texts with gigatoken (see the module docstring).

    ``tok`` is the ``gigatoken.Tokenizer``; ``prefix``/``suffix`` the ids the post-processor adds
    (from :func:`gigatoken_spec`). gigatoken encodes on its own thread pool in the main process
    and on the calling thread inside worker processes (it detects those itself); one thread at a
    time (``_lock``).
    """

    def __init__(self, tok, prefix: list[int], suffix: list[int]):
        self._tok, self.prefix, self.suffix = tok, list(prefix), list(suffix)
        self._lock = threading.Lock()

    @staticmethod
    def _parallel() -> bool:
        """Whether to use gigatoken's thread pool: on the main thread, not inside a worker process
        (gigatoken's own test); a worker thread or process encodes on its own thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            from gigatoken._parallel import resolve_parallel
        except ImportError:
            return False
        return resolve_parallel(None)

    def _rows(self, texts: list[str]):
        """The texts' ids: one array per text on the calling thread (a worker process), where one
        ``encode`` per text keeps gigatoken's word cache across calls (its serial ``encode_batch``
        does not: 3x the time on 256-document batches of sentencepiece-style text); else
        ``(ids, row offsets)`` from ``encode_batch`` on gigatoken's thread pool."""
        with self._lock:
            if self._parallel():
                return _flat(self._tok.encode_batch(list(texts), parallel=True))
            encode = self._tok.backend.encode
            return [encode(t) for t in texts]

    def encode_flat(
        self, texts: list[str], add_special_tokens: bool = True, eos: int = -1, max_length: int = 0
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(tokens int32, lengths int64, truncated, dropped)``, as ``WordCacheEncoder.encode_flat``."""
        from lqs_megatron import _C

        rows = self._rows(texts)
        pre, suf = (self.prefix, self.suffix) if add_special_tokens else ([], [])
        if isinstance(rows, list):
            return _C.assemble_arrays(rows, pre, suf, int(eos), int(max_length or 0))
        return _C.assemble_rows(*rows, pre, suf, int(eos), int(max_length or 0))

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """The texts' ids as lists (what ``tok(text).input_ids`` gives)."""
        rows = self._rows(texts)
        if isinstance(rows, list):
            rows = [r.tolist() for r in rows]
        else:
            flat, bounds = rows[0].tolist(), rows[1].tolist()
            rows = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
        if add_special_tokens and (self.prefix or self.suffix):
            return [self.prefix + r + self.suffix for r in rows]
        return rows
