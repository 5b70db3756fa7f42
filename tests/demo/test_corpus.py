"""The demo corpus: deterministic bytes, consistent labels, honest degradations, held-out target, no network."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lqs_megatron.demo.corpus import build_demo_corpus
from lqs_megatron.demo.degrade import BOILERPLATE_LINES, SPAM_WORDS
from lqs_megatron.errors import LQSError
from tests.utils import REPO

FILES = ("corpus.jsonl", "labels.npy", "target.jsonl", "manifest.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build with sockets disabled: any attempt to reach the network fails the build."""
    out = tmp_path_factory.mktemp("demo")

    class NoNetwork(socket.socket):
        def __init__(self, *a, **k):
            raise AssertionError("the demo corpus must not use the network")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket, "socket", NoNetwork)
    mp.setattr(socket, "create_connection", NoNetwork)
    try:
        manifest = build_demo_corpus(out)
    finally:
        mp.undo()
    rows = [json.loads(x) for x in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    target = [json.loads(x) for x in (out / "target.jsonl").read_text(encoding="utf-8").splitlines()]
    return out, manifest, rows, target


def test_deterministic_bytes(built, tmp_path):
    out, *_ = built
    build_demo_corpus(tmp_path / "again")
    # and in a fresh interpreter with another hash seed (set and dict order must not leak in)
    code = f"from lqs_megatron.demo.corpus import build_demo_corpus; build_demo_corpus({str(tmp_path / 'fresh')!r})"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)
    for name in FILES:
        first = (out / name).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == first, name
        assert (tmp_path / "fresh" / name).read_bytes() == first, name
    build_demo_corpus(tmp_path / "seed1", seed=1)
    assert (tmp_path / "seed1" / "corpus.jsonl").read_bytes() != (out / "corpus.jsonl").read_bytes()


def test_labels_and_counts(built):
    out, manifest, rows, target = built
    counts = manifest["counts"]
    assert 2000 <= counts["total"] <= 4000 and len(rows) == counts["total"]
    assert [r["id"] for r in rows] == [f"d{i:05d}" for i in range(len(rows))]
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.int8 and labels.tolist() == [int(r["label"] == "clean") for r in rows]
    kinds = collections.Counter(r["kind"] for r in rows)
    assert kinds["clean"] == counts["clean"] == int(labels.sum())
    degraded = [k for k in kinds if k != "clean"]
    assert sorted(degraded) == ["boilerplate", "junk", "shuffled", "spam"]
    assert max(kinds[k] for k in degraded) - min(kinds[k] for k in degraded) <= 1  # equal shares
    assert abs(counts["degraded"] / counts["total"] - 0.35) < 0.01
    by_id = {r["id"]: r for r in rows}
    sources = collections.Counter()
    for r in rows:
        assert isinstance(r["text"], str) and r["text"].strip(), r["id"]
        assert (r["label"] == "clean") == (r["kind"] == "clean") == ("of" not in r)
        if "of" in r:
            src = by_id[r["of"]]
            assert src["kind"] == "clean" and src["source"] == r["source"] and src["text"] != r["text"]
            sources[r["of"]] += 1
    assert max(sources.values()) == 1  # each degraded document copies a distinct clean one
    assert len(target) == counts["target"] == 160
    assert json.loads((out / "manifest.json").read_text())["counts"] == counts
    # varied lengths
    lengths = sorted(len(r["text"]) for r in rows if r["kind"] == "clean")
    assert lengths[len(lengths) // 10] < 250 and lengths[9 * len(lengths) // 10] > 900


def test_degradations_are_what_they_claim(built):
    _, _, rows, _ = built
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["kind"] == "clean":
            continue
        src = by_id[r["of"]]["text"]
        if r["kind"] == "shuffled":
            assert sorted(r["text"].split()) == sorted(src.split())
        elif r["kind"] == "junk":
            assert len(r["text"]) <= max(80, 0.8 * len(src) + 20)
        elif r["kind"] == "boilerplate":
            lines = r["text"].split("\n")
            title = src.strip().split("\n", 1)[0][:80]
            assert title in lines and all(x in BOILERPLATE_LINES for x in lines if x != title)
        elif r["kind"] == "spam":
            allowed = set(SPAM_WORDS) | {w.lower() for w in src.replace("\n", " ").split()} | {"python"}
            words = r["text"].split()
            assert all(w in allowed or w in src.lower() for w in words)
            assert len(set(words)) <= 6 + len(SPAM_WORDS)


def test_target_is_held_out_explanatory_text(built):
    _, _, rows, target = built
    corpus_text = "\n".join(r["text"] for r in rows if r["kind"] == "clean")
    corpus_paragraphs = {p for r in rows if r["kind"] == "clean" for p in r["text"].split("\n\n")}
    for t in target:
        q, a = t["conversations"]
        assert set(t) == {"id", "conversations", "source"}
        assert q.startswith(("Explain ", "What ")) and q.endswith(("?", ".")) and len(a) >= 100
        assert q.rstrip("?.") not in corpus_text
        assert not corpus_paragraphs.intersection(a.split("\n\n")), t["source"]
        assert not [p for p in a.split("\n\n") if len(p) >= 100 and p in corpus_text], t["source"]
    assert len({t["source"] for t in target}) == len(target)


def test_bad_parameters(tmp_path):
    with pytest.raises(LQSError, match="degraded_fraction"):
        build_demo_corpus(tmp_path, degraded_fraction=0.6)
    with pytest.raises(LQSError, match="min_chars"):
        build_demo_corpus(tmp_path, min_chars=500, max_chars=400)
    with pytest.raises(LQSError, match="num_target"):
        build_demo_corpus(tmp_path, num_target=10**6)
    assert not os.listdir(tmp_path)
