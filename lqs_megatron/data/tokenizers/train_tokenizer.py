"""Train a sentencepiece BPE tokenizer into a directory ``AutoTokenizer`` loads offline.

The model is trained *lossless* (identity normalisation, whitespace kept, byte
fallback), so that ``decode(encode(text)) == text`` and the Hugging Face tokenizer
gives exactly sentencepiece's ids. Special ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2,
``</s>`` 3; ``tok(text).input_ids`` adds no BOS or EOS (the pipeline appends EOS itself).

The directory holds ``tokenizer.model`` (for sentencepiece users), ``tokenizer.json`` and
``tokenizer_config.json`` (``PreTrainedTokenizerFast``). Why not ``LlamaTokenizer``: in
transformers 5 it rebuilds its own pre-tokenizer (``Metaspace``, prepend "first"), which
adds no ``▁`` to a text that already starts with a space and strips one space on decode,
so ``" a"`` neither matches sentencepiece nor round-trips. We keep sentencepiece's own
rule instead: the normaliser prepends ``▁`` and turns every space into ``▁``, then BPE.
(U+2581 ``▁`` in the input is read as a space, as in sentencepiece.)

Before the directory is published, the new tokenizer must give the first training documents
back from ``decode(encode(text))`` (:func:`~lqs_megatron.data.tokenizers.tokenizer.check_round_trip`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from lqs_megatron.data.tokenizers.tokenizer import ROUND_TRIP_DOCUMENTS, check_round_trip, load_tokenizer
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)

SPECIAL = {"pad": ("<pad>", 0), "unk": ("<unk>", 1), "bos": ("<s>", 2), "eos": ("</s>", 3)}
FIXED_PIECES = len(SPECIAL) + 256
"""The special pieces and byte fallback's 256 byte pieces: every vocabulary holds them besides its characters."""
MIN_COVERAGE = 0.98
"""sentencepiece's lowest ``character_coverage``."""


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int,
    max_sentence_length: int = 1 << 20,
    input_sentence_size: int = 2_000_000,
    num_threads: int = os.cpu_count() or 1,
    character_coverage: float | None = None,
) -> Path:
    """Train on ``texts`` (each a document) and write the tokenizer directory atomically.

    ``character_coverage``: the share of the characters (by count) that get a piece of their own; the rarer
    ones are spelled in UTF-8 bytes (byte fallback: still lossless). ``None``: 1.0 where the vocabulary has
    room for every distinct character, else (``texts`` re-iterable, e.g. a list) the largest coverage that
    fits, with a warning. A vocabulary too small for any coverage is an error naming the smallest that works.
    """
    if vocab_size < 16:
        raise LQSError(f"--vocab-size must be at least 16, got {vocab_size}")
    if character_coverage is not None and not MIN_COVERAGE <= character_coverage <= 1:
        raise LQSError(
            f"--character-coverage must be between {MIN_COVERAGE} and 1 (sentencepiece's range), got "
            f"{character_coverage}"
        )
    coverage = 1.0 if character_coverage is None else character_coverage
    try:
        model, first = _train(texts, vocab_size, coverage, max_sentence_length, input_sentence_size, num_threads)
    except _TooSmall as e:
        counts = None if isinstance(texts, Iterator) else _char_counts(texts)
        if counts is None:
            raise LQSError(
                f"--vocab-size {vocab_size} is too small at --character-coverage {coverage:g}: this corpus needs "
                f"{e.needed} pieces ({e.needed - FIXED_PIECES} characters, 256 byte pieces, {len(SPECIAL)} special "
                f"ones); pass --vocab-size {e.needed} or a lower --character-coverage (down to {MIN_COVERAGE})"
            ) from None
        smallest = FIXED_PIECES + _required_chars(counts, MIN_COVERAGE)
        fits = _coverage_fitting(counts, vocab_size - FIXED_PIECES)
        fits_ok = fits >= MIN_COVERAGE
        if character_coverage is not None or not fits_ok:
            raise LQSError(
                f"--vocab-size {vocab_size} is too small for this corpus at --character-coverage {coverage:g} "
                f"({len(counts)} distinct characters; every vocabulary also holds 256 byte pieces and "
                f"{len(SPECIAL)} special ones): the smallest vocabulary that works is {smallest} (with "
                f"--character-coverage {MIN_COVERAGE}; {e.needed} with {coverage:g})"
                + (f", or keep --vocab-size {vocab_size} with --character-coverage {fits:.6f}" if fits_ok else "")
            ) from None
        kept = _required_chars(counts, fits)
        logger.warning(
            "--vocab-size %d has no room for all %d distinct characters: the %d rarest (%.4f%% of the characters) "
            "are spelled as UTF-8 bytes (--character-coverage %.6f; pass --vocab-size %d to give each a piece)",
            vocab_size,
            len(counts),
            len(counts) - kept,
            100 * (1 - fits),
            fits,
            FIXED_PIECES + len(counts),
        )
        try:
            model, first = _train(texts, vocab_size, fits, max_sentence_length, input_sentence_size, num_threads)
        except _TooSmall as e2:
            raise LQSError(
                f"--vocab-size {vocab_size} is too small for this corpus: sentencepiece needs {e2.needed} pieces at "
                f"--character-coverage {fits:.6f}; the smallest vocabulary that works is about {smallest}"
            ) from None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL["bos"][0],
        "eos_token": SPECIAL["eos"][0],
        "unk_token": SPECIAL["unk"][0],
        "pad_token": SPECIAL["pad"][0],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    with atomic_dir(out_dir, command="train-tokenizer") as tmp:
        (tmp / "tokenizer.model").write_bytes(model)
        _write_tokenizer_json(tmp)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        tok = load_tokenizer(str(tmp), require_eos=False)
        round_trip = check_round_trip(tok, ((f"training document {i}", t) for i, t in enumerate(first)), out_dir)
    logger.info(
        "round trip: %d of the first %d training documents come back exactly",
        round_trip["exact"],
        round_trip["documents"],
    )
    return Path(out_dir)


class _TooSmall(Exception):
    """sentencepiece: the characters to keep (with the fixed pieces) do not fit into the vocabulary."""

    def __init__(self, needed: int):
        self.needed = needed


def _train(
    texts, vocab_size: int, coverage: float, max_sentence_length: int, input_sentence_size: int, num_threads: int
) -> tuple[bytes, list[str]]:
    """One sentencepiece training run; the model's bytes and the first documents (for the round-trip check)."""
    import sentencepiece as spm

    failure: list[BaseException] = []
    first: list[str] = []

    def nonempty() -> Iterator[str]:
        try:
            for t in texts:
                if t:
                    if len(first) < ROUND_TRIP_DOCUMENTS:
                        first.append(t)
                    yield t
        except LQSError as e:  # bad input: stop feeding, re-raised below (not as a sentencepiece error)
            failure.append(e)

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=nonempty(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            pad_id=SPECIAL["pad"][1],
            unk_id=SPECIAL["unk"][1],
            bos_id=SPECIAL["bos"][1],
            eos_id=SPECIAL["eos"][1],
            byte_fallback=True,
            character_coverage=coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=max_sentence_length,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if failure:
            raise failure[0] from None
        small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if small:
            raise _TooSmall(int(small.group(1))) from None
        raise LQSError(f"sentencepiece training failed: {e}") from None
    if failure:
        raise failure[0]
    return model.getvalue(), first


def _char_counts(texts: Iterable[str]) -> Counter:
    """Characters as sentencepiece counts them: spaces as ``▁``, and one ``▁`` prepended to each text."""
    counts: Counter = Counter()
    n = 0
    for t in texts:
        if t:
            counts.update(t)
            n += 1
    counts["▁"] += counts.pop(" ", 0) + n
    return counts


def _required_chars(counts: Counter, coverage: float) -> int:
    """How many characters sentencepiece keeps: the most frequent first, until their share reaches ``coverage``."""
    total, acc = sum(counts.values()), 0
    for k, (_, c) in enumerate(counts.most_common()):
        if acc / total >= coverage:
            return k
        acc += c
    return len(counts)


def _coverage_fitting(counts: Counter, room: int) -> float:
    """The largest coverage at which sentencepiece keeps at most ``room`` characters (below 0.98: none fits)."""
    if room <= 0:
        return 0.0
    freq = [c for _, c in counts.most_common()]
    return sum(freq[:room]) / sum(freq) * (1 - 1e-6)  # just below: sentencepiece compares in float32


def _write_tokenizer_json(directory: Path) -> None:
    """Convert ``tokenizer.model`` to ``tokenizer.json`` with sentencepiece's whitespace rule."""
    from tokenizers import normalizers, processors
    from transformers import LlamaTokenizerFast  # 4.x: converts the slow model; 5.x: an alias

    converted = LlamaTokenizerFast.from_pretrained(str(directory), local_files_only=True).backend_tokenizer
    converted.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    converted.pre_tokenizer = None
    # no BOS template (transformers 4.x's conversion adds one, 5.x's does not): the same ids under both
    converted.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    converted.save(str(directory / "tokenizer.json"))
