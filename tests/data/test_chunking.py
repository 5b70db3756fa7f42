"""Chunker and sentence boundaries, on synthetic streams with known answers."""

import math

import numpy as np
import pytest

from lqs_megatron.data.chunking import Chunker, SentenceBoundaries, train_sentence_splitter
from lqs_megatron.data.tokenizer import BatchEncoder
from tests.conftest import demo_texts


def _chunks(tokens, flags, L, pieces):
    c = Chunker(L, tokens.dtype)
    out_t, out_l = [], []
    for a, b in zip(pieces[:-1], pieces[1:]):
        t, n = c.feed(tokens[a:b], flags[a:b])
        out_t.append(t)
        out_l.append(n)
    t, n = c.finish()
    out_t.append(t)
    out_l.append(n)
    return np.concatenate(out_t), np.concatenate(out_l), c


def test_cuts_after_the_last_boundary_in_the_window_else_hard():
    L = 10
    tokens = np.arange(40, dtype=np.int32)
    flags = np.zeros(40, np.uint8)
    flags[[3, 7, 8, 13, 30]] = 1  # may end after these tokens
    t, lengths, c = _chunks(tokens, flags, L, [0, 40])
    # window 0..9: last boundary at 8 (>= min 5) -> 9 tokens; window 9..18: boundary 13 -> 5 tokens;
    # window 14..23: none -> hard cut of 10; window 24..33: boundary 30 -> 7; rest 9 tokens
    assert lengths.tolist() == [9, 5, 10, 7, 9]
    np.testing.assert_array_equal(t, tokens)
    assert (c.sentence_cuts, c.hard_cuts) == (3, 1)
    s = c.stats()
    assert s["chunks"] == 5 and s["chunk_length_max"] == 10 and s["chunk_length_min"] == 5


def test_boundaries_below_half_the_window_are_not_used():
    tokens = np.arange(25, dtype=np.int64)
    flags = np.zeros(25, np.uint8)
    flags[[1, 2, 11]] = 1  # too early for a window of 10 (min length 5)
    _, lengths, c = _chunks(tokens, flags, 10, [0, 25])
    assert lengths.tolist() == [10, 10, 5] and c.hard_cuts == 2


@pytest.mark.parametrize("L", [2, 7, 64, 1025])
def test_random_streams_same_result_for_any_piece_sizes(L):
    rng = np.random.default_rng(L)
    n = 5000
    tokens = rng.integers(0, 30000, n).astype(np.uint16)
    flags = (rng.random(n) < 0.05).astype(np.uint8)
    ref_t, ref_l, _ = _chunks(tokens, flags, L, [0, n])
    assert ref_l.sum() == n and ref_l.max() <= L and (ref_l[:-1] >= math.ceil(L / 2)).all()
    np.testing.assert_array_equal(ref_t, tokens)
    cuts = np.cumsum(ref_l)[:-1] - 1  # last token of each chunk but the final one
    sentence = ref_l[:-1] < L
    assert flags[cuts[sentence]].all()  # a short chunk always ends at a boundary
    pieces = sorted({0, n, *rng.integers(0, n, 30).tolist()})
    t, lengths, _ = _chunks(tokens, flags, L, pieces)
    np.testing.assert_array_equal(lengths, ref_l)
    np.testing.assert_array_equal(t, tokens)


def test_sentence_boundaries_mark_the_token_before_each_sentence(tiny_tokenizer):
    splitter = SentenceBoundaries(train_sentence_splitter(demo_texts(), sample_chars=100_000))
    text = "The first sentence is here. A second one follows! Does a third? Yes.\nA new line"
    enc = BatchEncoder(tiny_tokenizer).encode_with_offsets([text])[0]
    flags = splitter.flags(text, enc)
    ends = [enc.offsets[j][1] for j in np.flatnonzero(flags)]
    assert [text[:e] for e in ends] == [
        "The first sentence is here.",
        "The first sentence is here. A second one follows!",
        "The first sentence is here. A second one follows! Does a third?",
        "The first sentence is here. A second one follows! Does a third? Yes.",
        "The first sentence is here. A second one follows! Does a third? Yes.\n",
    ]
