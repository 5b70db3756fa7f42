"""The trained tokenizer is lossless and equals sentencepiece, whitespace included."""

import sentencepiece as spm

from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
from tests.conftest import demo_texts

CASES = [" a", "  two leading", "trailing  ", "\n\nnewlines\n", "\ttab", "x", "", "unicode é 日本 😀"]


def test_ids_equal_sentencepiece_and_round_trip(tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    sp = spm.SentencePieceProcessor(model_file=f"{tiny_tokenizer}/tokenizer.model")
    for text in CASES + demo_texts()[:40]:
        ids = tok(text).input_ids
        assert ids == sp.encode(text), repr(text[:40])
        assert tok.decode(ids) == text, repr(text[:40])
    assert tok.eos_token_id == 3 and tok.pad_token_id == 0 and len(tok) == 512
