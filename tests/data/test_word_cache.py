"""The word cache (data/tokenizers/word_cache.py, csrc/word_cache.cpp) gives exactly the ids of whole-text
encoding: on real text and random strings over the corners (runs of spaces, leading and trailing
spaces, the ``▁`` character itself, tabs and newlines, non-ASCII and byte-fallback characters),
with and without the post-processor's special tokens, with EOS and truncation as ``lqs tokenize``
appends them, after the cache is cleared under a tiny budget; and it applies only to tokenizers
for which that holds."""

import random

import numpy as np
import pytest

from lqs_megatron.data.preprocess.tokenize import flatten
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, load_tokenizer
from lqs_megatron.data.tokenizers.word_cache import WordCacheEncoder, word_cache_spec
from tests.conftest import demo_texts
from tests.data.conftest import edited_tokenizer

ALPHABET = list("ab c▁é\n\t.-") + [" ", "  ", "   ", "▁▁", " ▁", "▁ ", "日本", "😀", "\u00a0", "\u2581x", "qz"]


def random_texts(n: int, seed: int, max_len: int = 40) -> list[str]:
    rng = random.Random(seed)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, max_len))) for _ in range(n)]
    return [t for t in texts if t]


def corner_texts() -> list[str]:
    return [
        " ",
        "  ",
        " a",
        "a ",
        "a  b",
        "▁",
        "▁a b",
        " ▁ a",
        "a▁ ▁b",
        "\n \t ",
        "é 日本 😀",
        "a\u00a0b",
        "end with space ",
        "    indented code\n        more",
        "x" * 3000,
        "word " * 500,
    ]


def whole_text_ids(tok_dir: str, texts: list[str], add: bool) -> list[list[int]]:
    tok = load_tokenizer(tok_dir)
    return [tok(t, add_special_tokens=add).input_ids for t in texts]


def test_trained_tokenizer_qualifies(tiny_tokenizer):
    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    assert enc.word_cache is not None
    assert BatchEncoder(tiny_tokenizer, word_cache=False).word_cache is None


@pytest.mark.parametrize("add", [False, True])
def test_ids_equal_whole_text_encoding(tiny_tokenizer, add):
    texts = corner_texts() + demo_texts()[:40] + random_texts(600, seed=11)
    want = whole_text_ids(tiny_tokenizer, texts, add)
    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    enc.word_cache.cache.clear()  # the encoders are shared per process: start cold
    got = enc.encode(texts, add_special_tokens=add)  # cold cache: every segment a miss
    bad = [t for t, g, w in zip(texts, got, want) if g != w]
    assert not bad, bad[:5]
    assert enc.word_cache.cache.size > 0
    again = enc.encode(texts[::-1], add_special_tokens=add)  # warm cache, other batches
    assert again == want[::-1]


def test_tiny_budget_clears_and_stays_exact(tiny_tokenizer):
    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    enc.backend  # noqa: B018 - loads
    words = WordCacheEncoder(enc._paths.raw, *word_cache_spec(enc._paths.raw), max_bytes=2000)
    texts = demo_texts()[:30] + random_texts(300, seed=5)
    want = whole_text_ids(tiny_tokenizer, texts, False)
    sizes = []
    for i in range(0, len(texts), 7):
        assert words.encode(texts[i : i + 7], add_special_tokens=False) == want[i : i + 7]
        sizes.append(words.cache.bytes)
    assert any(b < a for a, b in zip(sizes, sizes[1:]))  # it outgrew the budget and was cleared


@pytest.mark.parametrize("max_length", [None, 2, 7, 50])
def test_encode_flat_matches_flatten(tiny_tokenizer, max_length):
    tok = load_tokenizer(tiny_tokenizer)
    eos = tok.eos_token_id
    texts = demo_texts()[:20] + random_texts(200, seed=3)
    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    tokens, lengths, truncated, dropped = enc.encode_flat(texts, eos, max_length)
    want = flatten(whole_text_ids(tiny_tokenizer, texts, True), eos, max_length, np.int64)
    np.testing.assert_array_equal(tokens, want.tokens)
    np.testing.assert_array_equal(lengths, want.lengths)
    assert (truncated, dropped) == (want.truncated, want.truncated_tokens)
    if max_length is not None and max_length < 50:
        assert truncated > 0


def test_special_strings_and_empty_texts_take_the_backend(tiny_tokenizer):
    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    texts = ["a </s> b", "plain text", "x<s>y"]
    assert enc.encode_flat(texts, 3, None) is None
    assert enc.encode_flat(["", "a"], 3, None) is None
    assert enc.encode(texts) == whole_text_ids(tiny_tokenizer, texts, True)


def test_bos_post_processor_becomes_the_prefix(tiny_tokenizer, tmp_path):
    def add_bos(spec):
        bos = next(t for t in spec["added_tokens"] if t["content"] == "<s>")
        spec["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos["id"]], "tokens": ["<s>"]}},
        }

    tok_dir = edited_tokenizer(tiny_tokenizer, tmp_path / "bos", add_bos)
    enc = BatchEncoder(tok_dir, gigatoken=False)
    assert enc.word_cache is not None and len(enc.word_cache.prefix) == 1
    texts = demo_texts()[:10] + random_texts(100, seed=9)
    for add in (True, False):
        assert enc.encode(texts, add_special_tokens=add) == whole_text_ids(tok_dir, texts, add)


def test_pieces_across_words_disqualify(tiny_tokenizer, tmp_path):
    def add_cross_piece(spec):
        vocab = spec["model"]["vocab"]
        vocab["e▁t"] = max(vocab.values()) + 1

    tok_dir = edited_tokenizer(tiny_tokenizer, tmp_path / "cross", add_cross_piece)
    assert BatchEncoder(tok_dir, gigatoken=False).word_cache is None


def test_bytelevel_tokenizer_does_not_qualify(bytelevel_tokenizer):
    assert BatchEncoder(bytelevel_tokenizer).word_cache is None


def test_native_protocol_errors(tiny_tokenizer):
    from lqs_megatron import _C

    cache = _C.WordCache(1 << 20)
    missing = cache.misses(["hello  world", "hello"])
    assert missing == ["▁hello", "▁▁world"]
    with pytest.raises(RuntimeError, match="before fill"):
        cache.assemble(["hello"], [], [], -1, 0)
    with pytest.raises(ValueError, match="2 segments"):
        cache.fill([[1]])  # a failed fill forgets the listed segments
    assert cache.misses(["hello  world"]) == ["▁hello", "▁▁world"]
    cache.abandon()
    assert cache.misses(["hello  world", "hello"]) == ["▁hello", "▁▁world"]
    cache.fill([[5, 6], [7]])
    tokens, lengths, _, _ = cache.assemble(["hello  world", "hello", ""], [], [], -1, 0)
    assert tokens.tolist() == [5, 6, 7, 5, 6] and lengths.tolist() == [3, 2, 0]
    assert cache.misses(["hello"]) == []


def test_threads_share_one_encoder(tiny_tokenizer):
    from concurrent.futures import ThreadPoolExecutor

    enc = BatchEncoder(tiny_tokenizer, gigatoken=False)
    texts = demo_texts()[:40] + random_texts(400, seed=13)
    batches = [texts[i : i + 9] for i in range(0, len(texts), 9)]
    want = [whole_text_ids(tiny_tokenizer, b, True) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(enc.encode, batches))
    assert got == want
