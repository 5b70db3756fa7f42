"""BatchEncoder's sentencepiece fast path (normalising with str.replace) gives exactly the ids of
``tok(text).input_ids``, on real text and on the corners: leading/trailing/repeated spaces, special
tokens' strings inside the text, empty strings, non-ASCII, the replacement character itself."""

import random

from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, load_tokenizer
from tests.conftest import demo_texts

CORNERS = [
    "",
    " ",
    "  ",
    " a",
    "a ",
    "a  b",
    "</s>",
    "a </s> b",
    "x<s>y",
    " <unk> ",
    "<pad>",
    "▁",
    "▁a b",
    "\n \t ",
    "é 日本 😀",
    "a\u00a0b",
    "end with space ",
]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("ab ▁é\n\t.") + ["</s>", "<s>", " ", "  ", "日"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def test_fast_path_equals_the_tokenizer(tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    enc = BatchEncoder(tiny_tokenizer, word_cache=False, gigatoken=False)  # the word cache has its own tests
    assert enc.backend is not None and enc._paths.raw is not None, "the trained tokenizer should take the fast path"
    texts = CORNERS + demo_texts()[:60] + _random_texts(400, seed=7)
    for add in (False, True):
        got = enc.encode(texts, add_special_tokens=add)
        want = [tok(t, add_special_tokens=add).input_ids for t in texts]
        bad = [t for t, g, w in zip(texts, got, want) if g != w]
        assert not bad, bad[:5]


def test_without_gigatoken_the_native_paths_take_over(tiny_tokenizer, bytelevel_tokenizer, monkeypatch):
    """With gigatoken not installed, the word cache (sentencepiece) or the backend (byte-level) encode."""
    from lqs_megatron.data.tokenizers import gigatoken_backend, tokenizer

    monkeypatch.setattr(gigatoken_backend, "gigatoken_available", lambda: False)
    monkeypatch.setattr(tokenizer, "_load_paths", tokenizer._load_paths.__wrapped__)  # no per-process cache
    texts = demo_texts()[:20] + _random_texts(100, seed=2)
    for tok_dir, encoding in ((tiny_tokenizer, "word cache"), (bytelevel_tokenizer, "backend")):
        enc = BatchEncoder(tok_dir)
        assert enc.encoding == encoding and enc.gigatoken is None
        tok = load_tokenizer(tok_dir)
        assert enc.encode(texts) == [tok(t).input_ids for t in texts]
