"""`lqs tokenize-target`: conversations joined by the tokenizer's conventions; file:line errors."""

import json
import os

import pytest

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.preprocess.conversations import PLAIN_SEPARATOR, TargetConfig, parse_turns, tokenize_target
from lqs_megatron.data.preprocess.jsonl import BadLine
from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
from tests.conftest import demo_texts
from tests.data.conftest import write_jsonl
from tests.utils import run_lqs


def _conversations():
    texts = demo_texts()
    convs = []
    for i in range(0, 24, 2):  # LIMA style: plain strings, user then assistant
        convs.append([f"Explain topic {i}.", texts[i][:600]])
    convs.append([{"from": "human", "value": "What is a list?"}, {"from": "gpt", "value": texts[30][:300]}])
    convs.append(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "And a dict?"},
            {"role": "assistant", "content": texts[31][:200]},
        ]
    )
    return convs


def _messages(conv):
    return parse_turns(conv, "conversations")


def test_plain_join_without_chat_template(tmp_path, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    assert not tok.chat_template
    convs = _conversations()
    src = write_jsonl(tmp_path / "lima.jsonl", [{"conversations": c} for c in convs])
    run_lqs(
        "tokenize-target",
        "--input",
        src,
        "--field",
        "conversations",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        tmp_path / "target",
    )
    ds = IndexedDataset(tmp_path / "target")
    assert len(ds) == ds.num_documents == len(convs)
    for i, conv in enumerate(convs):
        text = PLAIN_SEPARATOR.join(m["content"] for m in _messages(conv))
        assert ds[i].tolist() == tok(text).input_ids + [tok.eos_token_id]
    stats = json.loads((tmp_path / "target.stats.json").read_text())
    assert stats["format"].startswith("plain") and stats["documents"] == len(convs)


def test_chat_template_when_the_tokenizer_has_one(tmp_path, chat_tokenizer):
    tok = load_tokenizer(chat_tokenizer)
    assert tok.chat_template
    convs = _conversations()
    src = write_jsonl(tmp_path / "lima.jsonl", [{"conv": c} for c in convs])
    stats = tokenize_target(TargetConfig([src], "conv", chat_tokenizer, str(tmp_path / "t"), workers=2, batch_lines=3))
    ds = IndexedDataset(tmp_path / "t")
    for i, conv in enumerate(convs):
        ids = tok.apply_chat_template(_messages(conv), tokenize=True, return_dict=False)
        assert ds[i].tolist() == list(ids) + [tok.eos_token_id]
        assert ds[i].tolist().count(tok.bos_token_id) == len(conv)  # the template's control token per turn
    assert stats["format"] == "chat_template"


def test_roles_alternate_for_plain_strings_and_aliases_map():
    assert [m["role"] for m in _messages(["a", "b", "c"])] == ["user", "assistant", "user"]
    assert [m["role"] for m in _messages([{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}])] == [
        "user",
        "assistant",
    ]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("just a string", "must be a list of turns"),
        ([], "empty conversation"),
        (["fine", 3], "turn 1 of 'conversations' must be a string"),
        ([{"from": "human"}], 'turn 0 of \'conversations\' has no "value" or "content"'),
        (["", "  "], "every turn of 'conversations' is empty"),
    ],
)
def test_bad_conversations_fail_with_file_line(tmp_path, tiny_tokenizer, value, expected):
    src = write_jsonl(tmp_path / "in.jsonl", [{"conversations": ["q", "a"]}, {"conversations": value}])
    with pytest.raises(BadLine) as e:
        tokenize_target(TargetConfig([src], "conversations", tiny_tokenizer, str(tmp_path / "o"), workers=0))
    assert str(e.value).startswith(f"{src}:2: ") and expected in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_cli_errors_and_skip(tmp_path, tiny_tokenizer):
    rows = [{"conversations": ["q", "a"]}, {"conversations": "oops"}, {"other": 1}, {"conversations": ["x", 1]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["tokenize-target", "--input", src, "--field", "conversations", "--tokenizer", tiny_tokenizer]
    proc = run_lqs(*args, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and f"{src}:2: field 'conversations' must be a list" in proc.stderr
    assert not (tmp_path / "o.idx").exists()
    run_lqs(*args, "--out", tmp_path / "s", "--on-error", "skip")
    stats = json.loads((tmp_path / "s.stats.json").read_text())
    assert stats["skipped"]["by_reason"] == {"missing_field": 1, "not_list": 1, "not_string": 1}
    assert len(IndexedDataset(tmp_path / "s")) == 1
