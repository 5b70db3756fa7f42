"""`lqs tokenize --keep-fields`: the PREFIX.meta.jsonl provenance sidecar, aligned with the sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.merge import merge_datasets
from lqs_megatron.data.datasets.meta import meta_path, read_meta
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize
from lqs_megatron.errors import InputError, LQSError
from tests.conftest import demo_texts
from tests.data.conftest import write_jsonl


def _rows(seed: int, n: int | None = None) -> list[dict]:
    """Real texts with a source, a URL (absent from some records) and a non-ASCII title, shuffled."""
    rng = np.random.default_rng(seed)
    texts = demo_texts()
    order = rng.permutation(len(texts))[: n or len(texts)]
    rows = []
    for k, i in enumerate(order.tolist()):
        row = {"text": texts[i], "source": f"src-{rng.integers(0, 4)}", "title": f"été {i}"}
        if rng.random() < 0.8:
            row["url"] = f"https://example.org/{k}?q={rng.integers(1 << 30)}"
        rows.append(row)
    return rows


def _cfg(inputs, tok, out, **kw) -> TokenizeConfig:
    kw.setdefault("progress", False)
    return TokenizeConfig(inputs, "text", tok, str(out), **kw)


def _expected(rows, fields=("source", "url")):
    return [{f: r.get(f) for f in fields} for r in rows]


@pytest.mark.parametrize("workers,batch_lines", [(0, 256), (2, 3)])
def test_document_mode_one_line_per_sequence_in_order(tmp_path, tiny_tokenizer, workers, batch_lines):
    rows = _rows(0)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    stats = tokenize(
        _cfg([src], tiny_tokenizer, tmp_path / "d", workers=workers, batch_lines=batch_lines, keep_fields="source,url")
    )
    ds = IndexedDataset(tmp_path / "d")
    assert read_meta(tmp_path / "d", expected=len(ds)) == _expected(rows)
    assert stats["meta"] == meta_path(tmp_path / "d") and stats["args"]["keep_fields"] == ["source", "url"]
    first = open(meta_path(tmp_path / "d"), "rb").readline()
    assert first == (json.dumps(_expected(rows)[0], separators=(",", ":")) + "\n").encode()


def test_same_bytes_for_any_worker_count_and_skipped_lines_have_no_line(tmp_path, tiny_tokenizer):
    rows = _rows(1, 30)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[4] = '{"text": 7, "source": "bad"}'  # skipped: its fields must not shift the others
    lines[11] = "not json"
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n\n")
    kept = [r for i, r in enumerate(rows) if i not in (4, 11)]
    outs = []
    for w, b in ((0, 256), (2, 2), (3, 5)):
        out = tmp_path / f"w{w}"
        tokenize(
            _cfg(
                [str(tmp_path / "in.jsonl")],
                tiny_tokenizer,
                out,
                workers=w,
                batch_lines=b,
                on_error="skip",
                keep_fields=["title", "source"],
            )
        )
        outs.append(open(meta_path(out), "rb").read())
        assert read_meta(out, expected=len(IndexedDataset(out))) == _expected(kept, ("title", "source"))
    assert outs[0] == outs[1] == outs[2]


def test_chunk_mode_each_chunk_carries_the_document_it_starts_in(tmp_path, tiny_tokenizer):
    rows = _rows(2)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    tokenize(_cfg([src], tiny_tokenizer, tmp_path / "doc", workers=0))
    stats = tokenize(
        _cfg(
            [src],
            tiny_tokenizer,
            tmp_path / "c",
            mode="chunk",
            max_length=97,
            workers=2,
            batch_lines=5,
            keep_fields="url",
        )
    )
    chunks = IndexedDataset(tmp_path / "c")
    doc_ends = np.cumsum(IndexedDataset(tmp_path / "doc").sequence_lengths.astype(np.int64))
    chunk_starts = np.concatenate([[0], np.cumsum(chunks.sequence_lengths.astype(np.int64))[:-1]])
    owner = np.searchsorted(doc_ends, chunk_starts, side="right")  # the document holding each chunk's first token
    last = np.searchsorted(doc_ends, chunk_starts + chunks.sequence_lengths - 1, side="right")
    assert (last != owner).any() and stats["sequences"] == len(chunks)  # some chunks span two documents
    assert read_meta(tmp_path / "c", expected=len(chunks)) == [{"url": rows[d].get("url")} for d in owner.tolist()]


def test_failed_run_keeps_the_old_output_and_a_run_without_fields_drops_the_stale_sidecar(tmp_path, tiny_tokenizer):
    rows = _rows(3, 20)
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    out = tmp_path / "o"
    tokenize(_cfg([good], tiny_tokenizer, out, workers=0, keep_fields="source"))
    before = [open(f"{out}{e}", "rb").read() for e in (".bin", ".idx", ".meta.jsonl")]
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "source": "x"}\n{"text": null}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2"):
        tokenize(_cfg([str(tmp_path / "bad.jsonl")], tiny_tokenizer, out, workers=0, keep_fields="source"))
    assert [open(f"{out}{e}", "rb").read() for e in (".bin", ".idx", ".meta.jsonl")] == before
    assert not list(tmp_path.glob("o.meta.jsonl.tmp-*")) and not list(tmp_path.glob("o.tmp-*"))
    tokenize(_cfg([good], tiny_tokenizer, out, workers=0))
    assert read_meta(out) is None


def test_merge_carries_the_sidecars_in_order(tmp_path, tiny_tokenizer):
    rows = _rows(4)
    a = write_jsonl(tmp_path / "a.jsonl", rows[:30])
    b = write_jsonl(tmp_path / "b.jsonl", rows[30:])
    for name, files in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        tokenize(_cfg(files, tiny_tokenizer, tmp_path / name, workers=0, keep_fields="source,url"))
    info = merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert info["meta"] == meta_path(tmp_path / "m")
    for ext in (".bin", ".idx", ".meta.jsonl"):
        assert open(f"{tmp_path / 'm'}{ext}", "rb").read() == open(f"{tmp_path / 'ab'}{ext}", "rb").read(), ext
    tokenize(_cfg([b], tiny_tokenizer, tmp_path / "b", workers=0))  # now b has no sidecar: all or none
    with pytest.raises(LQSError, match="keep all or none"):
        merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m2")


def test_cli_keep_fields(tmp_path, tiny_tokenizer, capsys):
    rows = _rows(5, 12)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    base = ["tokenize", "--input", src, "--tokenizer", tiny_tokenizer, "--workers", "1"]
    assert main([*base, "--out", str(tmp_path / "o"), "--keep-fields", "source,url"]) == 0
    assert "provenance in" in capsys.readouterr().out
    assert read_meta(tmp_path / "o", expected=12) == _expected(rows)
    assert main([*base, "--out", str(tmp_path / "p"), "--keep-fields", "source,,url"]) == 1
    assert "--keep-fields takes comma-separated field names" in capsys.readouterr().err
