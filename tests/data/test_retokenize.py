"""`lqs retokenize`: A -> A is the identity, A -> B equals tokenizing the text with B, structure kept."""

import json

import numpy as np
import pytest

from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from lqs_megatron.data.preprocess.retokenize import RetokenizeConfig, retokenize
from lqs_megatron.data.preprocess.tokenize import tokenize_files
from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
from lqs_megatron.errors import LQSError
from tests.conftest import demo_texts
from tests.utils import run_lqs


def _bytes(prefix):
    return [open(f"{prefix}{e}", "rb").read() for e in (".bin", ".idx")]


@pytest.fixture(scope="module")
def doc_data(tmp_path_factory, corpus_jsonl, tiny_tokenizer):
    out = tmp_path_factory.mktemp("retok") / "docs"
    tokenize_files(corpus_jsonl, "text", tiny_tokenizer, out, workers=0, progress=False)
    return str(out)


def test_a_to_a_is_the_identity(tmp_path, doc_data, tiny_tokenizer):
    run_lqs(
        "retokenize",
        "--data",
        doc_data,
        "--src-tokenizer",
        tiny_tokenizer,
        "--dst-tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "same",
        "--workers",
        "2",
    )
    assert _bytes(tmp_path / "same") == _bytes(doc_data)
    stats = json.loads((tmp_path / "same.stats.json").read_text())
    assert stats["source"]["tokens"] == stats["tokens"]


def test_a_to_b_equals_tokenizing_the_text_with_b(
    tmp_path, doc_data, corpus_jsonl, tiny_tokenizer, bytelevel_tokenizer
):
    tokenize_files(corpus_jsonl, "text", bytelevel_tokenizer, tmp_path / "direct", workers=0, progress=False)
    for w in (0, 2):
        cfg = RetokenizeConfig(
            doc_data, tiny_tokenizer, bytelevel_tokenizer, str(tmp_path / f"b{w}"), workers=w, batch_tokens=20_000
        )
        retokenize(cfg)
        assert _bytes(tmp_path / f"b{w}") == _bytes(tmp_path / "direct")


def test_segments_sequences_and_documents_are_kept(tmp_path, tiny_tokenizer, bytelevel_tokenizer):
    """Sequences holding several EOS-ended segments (and a trailing one without EOS), documents of several."""
    a, b = load_tokenizer(tiny_tokenizer), load_tokenizer(bytelevel_tokenizer)
    texts = [t[:400] for t in demo_texts()[:30]]
    rng = np.random.default_rng(0)
    layout = []  # per document: per sequence: (segment texts, closed-by-eos flags)
    k = 0
    while k < len(texts):
        doc = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 4))
            segs = texts[k : k + n]
            k += n
            if not segs:
                break
            closed = [True] * len(segs)
            closed[-1] = bool(rng.random() < 0.7)
            doc.append((segs, closed))
        if doc:
            layout.append(doc)
    with IndexedDatasetWriter(tmp_path / "in", np.uint16) as w:
        for doc in layout:
            for segs, closed in doc:
                ids = []
                for s, c in zip(segs, closed):
                    ids += a(s).input_ids + ([a.eos_token_id] if c else [])
                w.add_item(ids)
            w.end_document()
    retokenize(
        RetokenizeConfig(
            str(tmp_path / "in"),
            tiny_tokenizer,
            bytelevel_tokenizer,
            str(tmp_path / "out"),
            workers=2,
            batch_tokens=3000,
        )
    )
    src, out = IndexedDataset(tmp_path / "in"), IndexedDataset(tmp_path / "out")
    np.testing.assert_array_equal(out.document_indices, src.document_indices)
    i = 0
    for doc in layout:
        for segs, closed in doc:
            expect = []
            for s, c in zip(segs, closed):
                expect += b(s).input_ids + ([b.eos_token_id] if c else [])
            assert out[i].tolist() == expect, f"sequence {i}"
            i += 1
    assert i == len(out)


def test_wrong_source_tokenizer_is_a_clear_error(tmp_path, bytelevel_tokenizer, tiny_tokenizer, corpus_jsonl):
    tokenize_files(corpus_jsonl, "text", bytelevel_tokenizer, tmp_path / "bl", workers=0, progress=False)
    with pytest.raises(LQSError, match="wrong source tokenizer"):
        retokenize(RetokenizeConfig(str(tmp_path / "bl"), tiny_tokenizer, tiny_tokenizer, str(tmp_path / "x")))
    with pytest.raises(LQSError, match="--out must differ from --data"):
        RetokenizeConfig(str(tmp_path / "bl"), tiny_tokenizer, tiny_tokenizer, str(tmp_path / "bl"))
