"""`lqs train-tokenizer` with more distinct characters than the vocabulary has room for (issue 24): a
coverage that fits is chosen (byte fallback keeps it lossless), or one line names the smallest vocabulary
that works; `--character-coverage` sets it."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer
from lqs_megatron.errors import LQSError
from tests.conftest import demo_texts


def _corpus(tmp_path, rare: int, seed: int, uniform: bool = False):
    """The demo texts plus ``rare`` distinct CJK characters, each a few times (or, ``uniform``, as often as
    the rest: no coverage of 0.98 or more can leave enough of them out)."""
    rng = np.random.default_rng(seed)
    chars = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FFF), rare, replace=False)]
    if uniform:
        extra = ["".join(rng.choice(chars, 40)) + " " + " ".join(chars[i::7]) for i in range(60)]
        texts = demo_texts()[:20] + extra
    else:
        extra = ["Rare: " + "".join(chars[k : k + 40]) for k in range(0, rare, 40)]
        texts = demo_texts()[:40] + extra
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return src, texts, extra


def _train(src, out, vocab, *extra):
    return main(["train-tokenizer", "--input", str(src), "--vocab-size", str(vocab), "--out", str(out), *extra])


def test_a_coverage_that_fits_is_chosen_and_stays_lossless(tmp_path, caplog, capsys):
    from transformers import AutoTokenizer

    src, texts, extra = _corpus(tmp_path, 420, seed=1)
    distinct = len(set("".join(texts)) | {"▁"})
    assert distinct + 260 > 500  # every character's own piece would not fit
    with caplog.at_level(logging.WARNING):
        assert _train(src, tmp_path / "tok", 500) == 0
    assert "has no room for all" in caplog.text and f"pass --vocab-size {distinct - 1 + 260}" in caplog.text
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(tok) == 500
    for t in extra + texts[:5]:
        assert tok.decode(tok(t).input_ids) == t  # the rare characters as bytes, still lossless


def test_too_small_for_any_coverage_names_the_smallest_vocabulary(tmp_path, capsys):
    src, texts, _ = _corpus(tmp_path, 400, seed=2, uniform=True)
    assert _train(src, tmp_path / "tok", 500) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--character_coverage" not in err, err
    assert err.startswith("lqs train-tokenizer: error: --vocab-size 500 is too small for this corpus"), err
    smallest = int(re.search(r"the smallest vocabulary that works is (\d+) \(with --character-coverage 0.98", err)[1])
    assert not (tmp_path / "tok").exists()
    train_tokenizer(texts, tmp_path / "ok", smallest, num_threads=1, character_coverage=0.98)  # works
    with pytest.raises(LQSError, match=f"--vocab-size {smallest - 1} is too small"):
        train_tokenizer(texts, tmp_path / "no", smallest - 1, num_threads=1, character_coverage=0.98)


def test_the_coverage_flag(tmp_path, capsys):
    src, _, _ = _corpus(tmp_path, 420, seed=3)
    assert _train(src, tmp_path / "tok", 500, "--character-coverage", "1") == 1  # as given: too small
    err = capsys.readouterr().err
    fits = re.search(r"or keep --vocab-size 500 with --character-coverage (0\.\d+)", err)
    assert fits and err.count("\n") == 1, err
    assert _train(src, tmp_path / "tok", 500, "--character-coverage", fits[1]) == 0
    assert _train(src, tmp_path / "t2", 500, "--character-coverage", "0.5") == 1
    assert "--character-coverage must be between 0.98 and 1 (sentencepiece's range), got 0.5" in capsys.readouterr().err
