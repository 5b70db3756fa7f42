"""Fixtures of the data tests: a real corpus as jsonl, and tokenizers of other families."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import demo_texts


def edited_tokenizer(tok_dir: str, dst, edit) -> str:
    """A copy of tokenizer ``tok_dir`` at ``dst`` whose ``tokenizer.json`` spec went through ``edit(spec)``."""
    shutil.copytree(tok_dir, dst)
    path = dst / "tokenizer.json"
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    return str(dst)


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> str:
    """The pydoc topics (79 real documents, 465 kB) as ``{"text": ..., "id": ...}`` lines."""
    d = tmp_path_factory.mktemp("corpus")
    return write_jsonl(d / "corpus.jsonl", [{"id": i, "text": t} for i, t in enumerate(demo_texts())])


@pytest.fixture(scope="session")
def bytelevel_tokenizer(tmp_path_factory) -> str:
    """A GPT-2 style byte-level BPE (another family than the sentencepiece ``tiny_tokenizer``), EOS only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_texts(), trainer)
    out = tmp_path_factory.mktemp("bytelevel") / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(out))
    return str(out)


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_tokenizer, tmp_path_factory) -> str:
    """``tiny_tokenizer`` plus a chat template (control token ``<s>`` before each turn)."""
    out = tmp_path_factory.mktemp("chat") / "tokenizer"
    shutil.copytree(tiny_tokenizer, out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return str(out)
