"""Train a sentencepiece BPE tokenizer into a directory ``AutoTokenizer`` loads offline.

The model is trained *lossless* (identity normalisation, whitespace kept, byte
fallback), so that ``decode(encode(text)) == text`` and the Hugging Face tokenizer
built from ``tokenizer.model`` gives exactly sentencepiece's ids. (With
sentencepiece's default NFKC normalisation and whitespace folding the two disagree
on repeated spaces.) Special ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3.

The directory holds ``tokenizer.model`` and ``tokenizer_config.json`` (a
``LlamaTokenizer``, no BOS or EOS added by ``__call__``: the pipeline appends EOS
itself), plus ``tokenizer.json`` saved by transformers for fast loading.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_dir

SPECIAL = {"pad": ("<pad>", 0), "unk": ("<unk>", 1), "bos": ("<s>", 2), "eos": ("</s>", 3)}


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int,
    max_sentence_length: int = 1 << 20,
    input_sentence_size: int = 2_000_000,
    num_threads: int = os.cpu_count() or 1,
) -> Path:
    """Train on ``texts`` (each a document) and write the tokenizer directory atomically."""
    import sentencepiece as spm  # noqa: PLC0415

    if vocab_size < 16:
        raise LQSError(f"--vocab-size must be at least 16, got {vocab_size}")

    def nonempty() -> Iterator[str]:
        for t in texts:
            if t:
                yield t

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
            character_coverage=1.0,
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
        raise LQSError(f"sentencepiece training failed: {e}") from None
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": SPECIAL["bos"][0],
        "eos_token": SPECIAL["eos"][0],
        "unk_token": SPECIAL["unk"][0],
        "pad_token": SPECIAL["pad"][0],
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 1_000_000_000,
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        from transformers import AutoTokenizer  # noqa: PLC0415

        tok = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
        tok.save_pretrained(str(tmp))  # adds tokenizer.json: fast loading, same ids
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
    return Path(out_dir)
