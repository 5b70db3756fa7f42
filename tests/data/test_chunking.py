"""Chunker and sentence boundaries, on synthetic streams with known answers."""

import json
import math
import re
import time

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.preprocess.chunking import Chunker, SentenceBoundaries, blocks, train_sentence_splitter
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder
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


# ---------------------------------------------------------------- long documents (issue 24, serious 7)


def _reference_flags(splitter, text, enc):
    """The per-gap lookup through the tokenizer's own ``char_to_token`` (quadratic over a long document)."""
    flags = np.zeros(len(enc.ids), dtype=np.uint8)
    for lo, hi in splitter.gaps(text):
        for pos in (lo, hi) if lo < hi else (lo,):
            j = enc.char_to_token(pos)
            if j is not None and j > 0 and enc.token_to_chars(j)[0] >= lo:
                flags[j - 1] = 1
                break
    return flags


@pytest.fixture(scope="module")
def splitter():
    return SentenceBoundaries(train_sentence_splitter(demo_texts(), sample_chars=200_000))


def _long_text(chars: int, seed: int) -> str:
    """Real sentences and line breaks, topics in a random order, with some non-ASCII."""
    rng = np.random.default_rng(seed)
    texts = demo_texts()
    parts, n = [], 0
    while n < chars:
        t = texts[int(rng.integers(len(texts)))] + rng.choice([" Ünïcödé ✓. ", "\n\n", " 日本語の文。 "])
        parts.append(t)
        n += len(t)
    return "".join(parts)[:chars]


def test_flags_equal_the_tokenizers_char_to_token(tiny_tokenizer, splitter):
    rng = np.random.default_rng(11)
    big = _long_text(200_000, 3)
    texts = ["", " ", "\n", "a. B. c.", "Tabs.\tA new one.\r\nCRLF. ✓✓ Done!  "]
    texts += [big[a : a + int(rng.integers(1, 5000))] for a in rng.integers(0, len(big) - 5000, 40)]
    texts.append(big)  # more than one block
    encs = BatchEncoder(tiny_tokenizer).encode_with_offsets(texts)
    for text, enc in zip(texts, encs):
        np.testing.assert_array_equal(splitter.flags(text, enc), _reference_flags(splitter, text, enc), text[:40])

    class Shuffled:  # offsets out of order: the tokenizer's own lookup is used
        def __init__(self, enc):
            self.ids, self.offsets = enc.ids, list(enc.offsets)
            self.offsets[1], self.offsets[2] = self.offsets[2], self.offsets[1]

        def char_to_token(self, pos):
            return next((j for j, (s, e) in enumerate(self.offsets) if s <= pos < e), None)

        def token_to_chars(self, j):
            return self.offsets[j]

    enc = Shuffled(encs[6])
    np.testing.assert_array_equal(splitter.flags(texts[6], enc), _reference_flags(splitter, texts[6], enc))


def test_blocks_cover_the_text_at_line_ends_or_spaces():
    text = _long_text(500_000, 5) + "x" * 200_000  # the tail has no whitespace: cut at the block size
    bounds = list(blocks(text, 1 << 12))
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    assert all(b == c for (_, b), (c, _) in zip(bounds[:-1], bounds[1:]))
    assert all(0 < b - a <= 1 << 12 for a, b in bounds)
    ends = [text[b - 1] for _, b in bounds[:-1]]
    assert ends.count("\n") > len(ends) // 2 and set(ends) <= {"\n", " ", "x"} and ends[-1] == "x"
    assert list(blocks("short text")) == [(0, 10)]


def test_splitting_time_is_linear_in_the_document(tiny_tokenizer, splitter):
    """4x the characters take about 4x the CPU time (bound 7x; the per-gap char_to_token lookup took 12x)."""
    enc = BatchEncoder(tiny_tokenizer)

    def cpu(chars):
        text = _long_text(chars, chars)
        e = enc.encode_with_offsets([text])[0]
        best = math.inf
        for _ in range(2):
            t = time.process_time()
            splitter.flags(text, e)
            best = min(best, time.process_time() - t)
        return best

    small, large = cpu(250_000), cpu(1_000_000)
    assert large < 7 * small, (small, large)


@pytest.mark.slow
def test_a_multi_megabyte_document_in_chunk_mode(tmp_path, tiny_tokenizer, capsys):
    doc = _long_text(3_000_000, 9)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*demo_texts()[:20], doc, "The end."]))
    out = tmp_path / "out"
    t = time.process_time()
    args = ["--mode", "chunk", "--max-length", "257", "--workers", "0", "--on-error", "skip"]
    assert main(["tokenize", "--input", str(src), "--tokenizer", tiny_tokenizer, "--out", str(out), *args]) == 0
    assert time.process_time() - t < 40  # ~16 s (10 s of it Punkt training on 2 MB); the per-gap lookup: ~90 s
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert stats["documents"] == 22 and stats["chunking"]["sentence_cuts"] > 20 * stats["chunking"]["hard_cuts"]
    assert "Traceback" not in capsys.readouterr().err


def test_the_splitters_time_limit_does_not_end_the_run(tmp_path, tiny_tokenizer, monkeypatch, caplog):
    """nltk runs Punkt's regular expressions under a wall-clock limit; with a limit nothing can meet, every
    block keeps only its line ends, and the run finishes."""
    import nltk.redos

    from lqs_megatron.data.preprocess import chunking

    monkeypatch.setattr(nltk.redos, "DEFAULT_TIMEOUT", 1e-9)
    monkeypatch.setattr(chunking, "_warned", set())
    texts = demo_texts()[:30]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = ["--mode", "chunk", "--max-length", "129", "--workers", "0", "--out", str(tmp_path / "out")]
    assert main(["tokenize", "--input", str(src), "--tokenizer", tiny_tokenizer, *args]) == 0
    assert "regex time limit hit while training on" in caplog.text and "while splitting" in caplog.text
    splitter = SentenceBoundaries(train_sentence_splitter(texts, 10_000))
    assert splitter.gaps(texts[3]) == [(m.end(), m.end()) for m in re.finditer("\n", texts[3])]
