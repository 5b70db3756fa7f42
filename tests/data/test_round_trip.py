"""The round-trip check of tokenize / tokenize-target / train-tokenizer, and tokenizers loaded as their own
tokenizer.json whatever model directory they sit in (issue 24, serious 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.tokenizers.fingerprint import tokenizer_info
from lqs_megatron.data.tokenizers.tokenizer import check_round_trip, load_tokenizer
from lqs_megatron.errors import LQSError
from tests.conftest import demo_texts
from tests.data.conftest import edited_tokenizer, write_jsonl


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng()
    pool = demo_texts()
    picks = rng.choice(len(pool), n - 1, replace=False)
    return ["The quick brown fox\njumps over the lazy dog."] + [pool[i][:300] for i in picks]


def _qwen2_dir(path, tok_dir) -> str:
    """A tiny Qwen2 model directory with ``tok_dir`` saved into it (save_pretrained, as a user does)."""
    import transformers

    cfg = transformers.Qwen2Config(
        vocab_size=len(load_tokenizer(tok_dir)),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    load_tokenizer(tok_dir).save_pretrained(str(path))
    return str(path)


def _tokenize(capsys, src, tok, out) -> tuple[int, str]:
    argv = ["tokenize", "--input", src, "--field", "text", "--tokenizer", tok, "--out", out, "--workers", 1]
    capsys.readouterr()  # what building the model printed
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_tokenizer_saved_into_a_qwen2_model_directory_tokenizes_losslessly(tmp_path, tiny_tokenizer, capsys):
    texts = _texts(12)
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    model = _qwen2_dir(tmp_path / "qwen", tiny_tokenizer)
    rc, err = _tokenize(capsys, src, model, tmp_path / "d")
    assert rc == 0, err
    tok = load_tokenizer(model)
    ds = IndexedDataset(tmp_path / "d")
    for i, text in enumerate(texts):
        assert tok.decode(ds[i][:-1].tolist()) == text, i  # the EOS removed
    stats = json.loads((tmp_path / "d.stats.json").read_text())
    assert stats["round_trip"]["documents"] == stats["round_trip"]["exact"] == len(texts)


def _as_qwen2_class(model_dir):
    """The same directory with tokenizer_config.json naming Qwen2Tokenizer: transformers rebuilds it (lossy)."""
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_path.write_text(json.dumps(cfg))
    return model_dir


def test_a_lossy_tokenizer_stops_tokenize_naming_the_text(tmp_path, tiny_tokenizer, capsys):
    texts = _texts(6)
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    _qwen2_dir(tmp_path / "qwen", tiny_tokenizer)
    model = _as_qwen2_class(tmp_path / "qwen")
    tok = load_tokenizer(str(model))
    back = tok.decode(tok(texts[0]).input_ids)
    assert back.startswith("Thequick")  # the journey's tokenizer: every space dropped
    rc, err = _tokenize(capsys, src, model, tmp_path / "d")
    assert rc == 1
    line = _one_line(err)
    assert f"{src}:1" in line and "'The quick brown fox" in line and "'Thequickbrownfox" in line, line
    assert not (tmp_path / "d.bin").exists() and not (tmp_path / "d.idx").exists()
    # a tokenizer.json of its own that removes spaces stops it the same way
    lossy = edited_tokenizer(
        tiny_tokenizer,
        tmp_path / "nospace",
        lambda spec: spec.update(normalizer={"type": "Replace", "pattern": {"String": " "}, "content": ""}),
    )
    rc, err = _tokenize(capsys, src, lossy, tmp_path / "d")
    assert rc == 1 and "loses text" in _one_line(err) and f"{src}:1" in err


def test_tokenize_target_stops_on_a_lossy_tokenizer_and_records_its_own(tmp_path, tiny_tokenizer, capsys):
    rows = [{"conversations": ["The quick brown fox?", "It jumps over the lazy dog."]}]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    lossy = edited_tokenizer(
        tiny_tokenizer,
        tmp_path / "nospace",
        lambda spec: spec.update(normalizer={"type": "Replace", "pattern": {"String": " "}, "content": ""}),
    )
    rc = main(
        ["tokenize-target", "--input", str(src), "--tokenizer", lossy, "--out", str(tmp_path / "t"), "--workers", "0"]
    )
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and f"{src}:1" in line and "'Thequickbrownfox" in line, line
    assert not (tmp_path / "t.idx").exists()
    # the tokenizer's own: written, with its identity and the round trip in the stats
    assert (
        main(
            [
                "tokenize-target",
                "--input",
                str(src),
                "--tokenizer",
                tiny_tokenizer,
                "--out",
                str(tmp_path / "t"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "t.stats.json").read_text())
    assert stats["round_trip"]["documents"] == stats["round_trip"]["exact"] == 1
    assert stats["tokenizer"]["fingerprint"] == tokenizer_info(tiny_tokenizer)["fingerprint"]


def test_train_tokenizer_checks_the_tokenizer_it_trained(tmp_path, monkeypatch):
    from lqs_megatron.data.tokenizers import train_tokenizer as tt

    write = tt._write_tokenizer_json

    def lossy(directory):
        write(directory)
        spec = json.loads((directory / "tokenizer.json").read_text())
        spec["normalizer"]["normalizers"].insert(0, {"type": "Replace", "pattern": {"String": "e"}, "content": ""})
        (directory / "tokenizer.json").write_text(json.dumps(spec))

    monkeypatch.setattr(tt, "_write_tokenizer_json", lossy)
    with pytest.raises(LQSError, match=r"training document 0 comes back changed"):
        tt.train_tokenizer(_texts(8), tmp_path / "tok", vocab_size=512, num_threads=1)
    assert not (tmp_path / "tok").exists()


def test_the_documented_normalisation_is_not_a_loss(tmp_path, tiny_tokenizer):
    """NFKC and lower case (a tokenizer's own normaliser) pass; the record names them."""

    def nfkc_lower(spec):
        spec["normalizer"]["normalizers"][:0] = [{"type": "NFKC"}, {"type": "Lowercase"}]

    tok = load_tokenizer(edited_tokenizer(tiny_tokenizer, tmp_path / "nfkc", nfkc_lower))
    text = "The ﬁrst Ｆox"  # a ligature and a full-width letter
    assert tok.decode(tok(text).input_ids) != text
    rec = check_round_trip(tok, [("doc", text), ("doc2", "plain words here")], "nfkc")
    assert rec == {
        "documents": 2,
        "chars": len(text) + 16,
        "exact": 1,
        "normalisation": ["NFKC", "Lowercase", "LeadingSpace"],
    }
    tabs = edited_tokenizer(
        tiny_tokenizer,
        tmp_path / "tabs",
        lambda spec: spec.update(normalizer={"type": "Replace", "pattern": {"String": "\t"}, "content": " "}),
    )
    with pytest.raises(LQSError, match=r"doc comes back changed.*'a tab\\there' -> 'a tab here'"):
        check_round_trip(load_tokenizer(tabs), [("doc", "a tab\there")], tabs)
