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
    import sentencepiece as spm

    if vocab_size < 16:
        raise LQSError(f"--vocab-size must be at least 16, got {vocab_size}")

    failure: list[BaseException] = []

    def nonempty() -> Iterator[str]:
        try:
            for t in texts:
                if t:
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
        if failure:
            raise failure[0] from None
        raise LQSError(f"sentencepiece training failed: {e}") from None
    if failure:
        raise failure[0]
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
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        _write_tokenizer_json(tmp)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


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
