"""The gigatoken backend (data/tokenizers/gigatoken_backend.py) gives exactly the ids of ``tok(text).input_ids``
for the three tokenizer shapes it takes (sentencepiece-style BPE with byte fallback, GPT-2 byte-level,
Llama-3 split regex + byte-level with a BOS template): on real text and random strings over the
corners the split regexes distinguish (Unicode letters, marks and numbers of many scripts,
contractions in both cases, digit runs, whitespace runs before words and at the end, newlines,
emoji and other non-BMP characters, control characters), with EOS and truncation as ``lqs tokenize``
applies them; texts with added tokens' strings take the backend; tokenizers it would mis-encode
are refused when they load; and the corner strings catch a broken splitter."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lqs_megatron.data.preprocess.tokenize import flatten, tokenize_files
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, load_tokenizer
from tests.conftest import demo_texts

pytest.importorskip("gigatoken")

from lqs_megatron.data.tokenizers.gigatoken_backend import PROBE_TEXTS, gigatoken_spec
from tests.data.conftest import edited_tokenizer

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PIECES = list("abcXYZ .,;-_'\"!?()") + [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    " \n",
    "'s",
    "'S",
    "'ll",
    "'LL",
    "'t",
    "'ve",
    "'re",
    "'d",
    "'m",
    "n't",
    "0",
    "12",
    "345",
    "6789",
    "١٢",
    "٣",
    "½",
    "²",
    "Ⅻ",
    "é",
    "e\u0301",
    "ß",
    "İ",
    "ǅ",
    "Ω",
    "日本",
    "語",
    "한국",
    "αβ",
    "жи",
    "עב",
    "ع",
    "हि",
    "ไทย",
    "😀",
    "👩\u200d👧",
    "🇫🇷",
    "\U0001d400",
    "\U00020000",
    "\u00a0",
    "\u2009",
    "\u3000",
    "\u200b",
    "\u2028",
    "\x85",
    "\x0b",
    "\x0c",
    "\x00",
    "\x7f",
    "\ufffd",
    "▁",
    "ĠĊ",
    "<",
    "|",
]


def random_texts(n: int, seed: int, max_pieces: int = 30) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, max_pieces))) for _ in range(n)]


def corner_texts() -> list[str]:
    return PROBE_TEXTS + ["a <|endoftext|> b", "x</s>y", "<|begin_of_text|>hi", "", " ", "word " * 300]


@pytest.fixture(scope="session")
def llama3_tokenizer(tmp_path_factory) -> str:
    """A Llama-3 style tokenizer: the Llama-3 split regex, byte-level, ignore_merges, a BOS template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=special, initial_alphabet=alphabet)
    tok.train_from_iterator(demo_texts() + random_texts(3000, seed=99), trainer)  # merges across the corners too
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 0)]
    )
    out = tmp_path_factory.mktemp("llama3") / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[0], eos_token=special[1]).save_pretrained(str(out))
    return str(out)


FAMILIES = ["tiny_tokenizer", "bytelevel_tokenizer", "llama3_tokenizer"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parallel", [True, False])
def test_ids_equal_the_tokenizer(family, parallel, request, monkeypatch):
    """Both ways of calling gigatoken: its thread pool (main process), one text at a time (workers)."""
    from lqs_megatron.data.tokenizers.gigatoken_backend import GigatokenEncoder

    monkeypatch.setattr(GigatokenEncoder, "_parallel", staticmethod(lambda: parallel))
    tok_dir = request.getfixturevalue(family)
    tok = load_tokenizer(tok_dir)
    enc = BatchEncoder(tok_dir)
    assert enc.encoding == "gigatoken"
    texts = corner_texts() + demo_texts()[:30] + random_texts(1500, seed=21)
    for add in (True, False):
        got = enc.encode(texts, add_special_tokens=add)
        want = [tok(t, add_special_tokens=add).input_ids for t in texts]
        bad = [t for t, g, w in zip(texts, got, want) if g != w]
        assert not bad, bad[:5]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_length", [None, 3, 40])
def test_encode_flat_matches_flatten(family, max_length, request, monkeypatch):
    from lqs_megatron.data.tokenizers.gigatoken_backend import GigatokenEncoder

    monkeypatch.setattr(GigatokenEncoder, "_parallel", staticmethod(lambda: max_length == 3))
    tok_dir = request.getfixturevalue(family)
    tok = load_tokenizer(tok_dir)
    texts = demo_texts()[:20] + random_texts(300, seed=5)
    enc = BatchEncoder(tok_dir)
    tokens, lengths, truncated, dropped = enc.encode_flat(texts, tok.eos_token_id, max_length)
    want = flatten([tok(t).input_ids for t in texts], tok.eos_token_id, max_length, np.int64)
    np.testing.assert_array_equal(tokens, want.tokens)
    np.testing.assert_array_equal(lengths, want.lengths)
    assert (truncated, dropped) == (want.truncated, want.truncated_tokens)


def test_added_token_strings_and_empty_texts_take_the_backend(llama3_tokenizer):
    enc = BatchEncoder(llama3_tokenizer)
    assert enc.encode_flat(["plain", "has <|end_of_text|> inside"], 1, None) is None
    assert enc.encode_flat(["", "a"], 1, None) is None
    assert enc.encode_flat(["plain", "text"], 1, None) is not None


def test_no_gigatoken_and_the_stats(tmp_path, corpus_jsonl, bytelevel_tokenizer):
    assert BatchEncoder(bytelevel_tokenizer, gigatoken=False).encoding == "backend"
    a = tokenize_files(corpus_jsonl, "text", bytelevel_tokenizer, tmp_path / "a", workers=0, progress=False)
    b = tokenize_files(
        corpus_jsonl, "text", bytelevel_tokenizer, tmp_path / "b", workers=0, progress=False, gigatoken=False
    )
    assert (a["encoding"], b["encoding"]) == ("gigatoken", "backend")
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()


def _backend(tok_dir: str):
    enc = BatchEncoder(tok_dir, gigatoken=False)
    return enc.backend


@pytest.mark.parametrize(
    "edit",
    [
        # gigatoken loads these but encodes them differently: the probe strings catch it
        lambda s: s["pre_tokenizer"].update(use_regex=False),
        lambda s: s.update(
            pre_tokenizer={
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, s["pre_tokenizer"]],
            }
        ),
        # refused by structure: stochastic, or components gigatoken does not implement
        lambda s: s["model"].update(dropout=0.1),
        lambda s: s.update(normalizer={"type": "Lowercase"}),
        lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
    ],
)
def test_tokenizers_gigatoken_would_misencode_are_refused(bytelevel_tokenizer, tmp_path, edit):
    tok_dir = edited_tokenizer(bytelevel_tokenizer, tmp_path / "edited", edit)
    assert gigatoken_spec(_backend(tok_dir)) is None
    assert BatchEncoder(tok_dir).encoding == "backend"


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"),  # refused by structure
        # gigatoken 0.10 prefixes only the first split piece with a space, tokenizers each one: the probe catches it
        lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True),
    ],
)
def test_llama3_shapes_gigatoken_would_misencode_are_refused(llama3_tokenizer, tmp_path, edit):
    tok_dir = edited_tokenizer(llama3_tokenizer, tmp_path / "edited", edit)
    assert gigatoken_spec(_backend(tok_dir)) is None


def regex_split_encoder(tok_dir: str, pattern: str):
    """A byte-level encoder whose splitter is ``pattern`` run by the ``regex`` module, each piece then
    encoded by the tokenizer's own model: with the tokenizer's pattern, the tokenizer's ids."""
    import regex
    from tokenizers import Tokenizer, pre_tokenizers

    model = Tokenizer.from_file(f"{tok_dir}/tokenizer.json")
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    rx = regex.compile(pattern)

    def encode(texts: list[str]) -> list[list[int]]:
        out = []
        for t in texts:
            pieces, at = [], 0
            for m in rx.finditer(t):
                pieces += [t[at : m.start()], m.group()] if m.start() > at else [m.group()]
                at = m.end()
            pieces += [t[at:]] if at < len(t) else []
            out.append([i for e in model.encode_batch(pieces, add_special_tokens=False) for i in e.ids])
        return out

    return encode


@pytest.mark.parametrize(
    "old,new",
    [
        ("", ""),  # the tokenizer's own pattern: no difference
        (r"\p{N}{1,3}", r"\p{N}{1,2}"),  # digit runs
        (r"\s+(?!\S)|", ""),  # whitespace runs before a word
        (r"\s*[\r\n]+|", ""),  # newlines
        (r"[^\r\n\p{L}\p{N}]?\p{L}+", r"[^\r\n\p{L}\p{N}]?[a-zA-Z]+"),  # letters of other scripts
        (r"\p{N}{1,3}", r"\p{N}+"),  # long digit runs
        (r"| ?[^\s\p{L}\p{N}]+", r"|[^\s\p{L}\p{N}]+"),  # a space before punctuation
    ],
)
def test_the_corner_strings_catch_a_broken_splitter(llama3_tokenizer, old, new):
    """Mutation check: a splitter that differs from the tokenizer's regex in one rule gives other ids on
    the strings these tests use (the random ones and the load-time probe alike). Mutations that only
    *join* pieces (e.g. any change to the contraction rule: ``'Sup`` one piece, not ``'S`` + ``up``)
    do not show in the ids of a vocabulary trained with the right splitter, which holds no
    merge across such a boundary; the ones here split differently."""
    assert old in LLAMA3_SPLIT
    encode = regex_split_encoder(llama3_tokenizer, LLAMA3_SPLIT.replace(old, new, 1))
    backend = _backend(llama3_tokenizer)
    for texts in (PROBE_TEXTS, random_texts(300, seed=3)):
        want = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        differs = [t for t, g, w in zip(texts, encode(texts), want) if g != w]
        assert bool(differs) == (old != ""), differs[:3]


class _Exclusive:
    """A gigatoken tokenizer's backend whose ``encode`` fails when two threads are inside it at once,
    as gigatoken's does now and then ("Already borrowed": its state stays borrowed while Python code
    runs); made certain here by a wait inside every call."""

    def __init__(self, backend):
        self._backend, self._inside = backend, threading.Lock()

    def encode(self, text):
        if not self._inside.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            time.sleep(0.001)
            return self._backend.encode(text)
        finally:
            self._inside.release()

    def __getattr__(self, name):
        return getattr(self._backend, name)


class _Tokenizer:
    def __init__(self, real):
        self._real, self.backend = real, _Exclusive(real.backend)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_worker_threads_never_share_a_gigatoken_tokenizer(tiny_tokenizer, monkeypatch):
    """`lqs tokenize` encodes with gigatoken in worker threads (seen failing with "Already borrowed" on a
    loaded machine when two entered one tokenizer at once): four threads encoding through one encoder
    at the same moment give the main thread's ids, with a tokenizer that fails on any overlap."""
    import gigatoken

    from lqs_megatron.data.tokenizers.tokenizer import _load_paths

    from_json = gigatoken.Tokenizer.from_json
    monkeypatch.setattr(gigatoken.Tokenizer, "from_json", staticmethod(lambda js: _Tokenizer(from_json(js))))
    _load_paths.cache_clear()  # the encoders are built again, on the stand-in
    try:
        enc = BatchEncoder(tiny_tokenizer)
        assert enc.encoding == "gigatoken"
        batches = [demo_texts()[i::4][:6] for i in range(4)]
        want = [enc.encode_flat(b, 2, None) for b in batches]  # the main thread: gigatoken's thread pool
        start = threading.Barrier(4)

        def work(batch):
            start.wait()
            return enc.encode_flat(batch, 2, None)

        with ThreadPoolExecutor(4) as pool:
            for g, w in zip(pool.map(work, batches), want):
                np.testing.assert_array_equal(g[0], w[0])
                np.testing.assert_array_equal(g[1], w[1])
    finally:
        _load_paths.cache_clear()
