"""Views (`lqs select/order --view`, `lqs materialize`): every reader of a dataset reads a view as it reads the
materialised copy, a view of a view composes, materialize writes the copy byte for byte, and a view whose source
changed is refused (docs/curation.md, "Views")."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from lqs_megatron.data.datasets.view import DatasetView, open_dataset
from lqs_megatron.errors import LQSError
from tests.conftest import demo_texts
from tests.utils import run_lqs

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
FILES = (".bin", ".idx", ".indices.npy", ".scores.npy", ".stats.json", ".meta.jsonl")


def lqs(*args) -> None:
    assert main([str(a) for a in args]) == 0, args


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    """A tokenized corpus with a provenance sidecar (``--keep-fields source``) and random float32 scores."""
    d = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(11)
    texts = demo_texts()[:70]
    with open(d / "corpus.jsonl", "w") as f:
        for i, t in enumerate(texts):
            cut = int(rng.integers(40, 600))
            f.write(json.dumps({"text": t[:cut], "source": f"s{i % 3}"}) + "\n")
    lqs(
        "tokenize",
        "--input",
        d / "corpus.jsonl",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        d / "corpus",
        "--keep-fields",
        "source",
    )
    n = len(IndexedDataset(d / "corpus"))
    scores = rng.standard_normal(n).astype(np.float32)
    scores[rng.choice(n, 6, replace=False)] = scores[0]  # ties
    np.save(d / "scores.npy", scores)
    return d, tiny_tokenizer


STEPS = {
    "select": ["select", "--method", "top-r", "--r", "0.6"],
    "order": ["order", "--method", "folding", "--layers", "3", "--jitter", "4", "--seed", "2"],
}


def _curate(step, data, scores, out, *extra):
    lqs(*STEPS[step][:1], "--data", data, "--scores", scores, "--out", out, *STEPS[step][1:], *extra)


def _same_files(a, b, suffixes=FILES):
    for s in suffixes:
        pa, pb = f"{a}{s}", f"{b}{s}"
        assert os.path.exists(pa) == os.path.exists(pb), s
        if os.path.exists(pa):
            assert open(pa, "rb").read() == open(pb, "rb").read(), f"{pa} != {pb}"


@pytest.mark.parametrize("step", sorted(STEPS))
def test_materialize_is_byte_identical_to_the_copy(corpus, tmp_path, monkeypatch, step):
    d, _ = corpus
    for sub in ("copy", "view", "mat"):
        (tmp_path / sub).mkdir()
    monkeypatch.chdir(tmp_path / "copy")  # the same relative --out everywhere: stats.json records it
    _curate(step, d / "corpus", d / "scores.npy", "out")
    monkeypatch.chdir(tmp_path / "view")
    _curate(step, d / "corpus", d / "scores.npy", "out", "--view")
    assert not os.path.exists("out.bin") and not os.path.exists("out.idx") and os.path.isfile("out.view.json")
    view = json.load(open("out.view.json"))
    assert view["source"] == str(d / "corpus") and view["command"] == step
    monkeypatch.chdir(tmp_path / "mat")
    lqs("materialize", "--data", tmp_path / "view" / "out", "--out", "out")
    _same_files(tmp_path / "copy" / "out", tmp_path / "mat" / "out")
    assert os.path.getsize(tmp_path / "copy" / "out.meta.jsonl") > 0  # the provenance sidecar was compared too
    # the view's own sidecars are the copy's, and it reports the same tokenizer identity
    _same_files(tmp_path / "copy" / "out", tmp_path / "view" / "out", (".indices.npy", ".scores.npy", ".stats.json"))


def _read_all(ds) -> list[list[int]]:
    return [ds[i].tolist() for i in range(len(ds))]


def test_a_view_of_a_view_composes(corpus, tmp_path):
    d, _ = corpus
    _curate("select", d / "corpus", d / "scores.npy", tmp_path / "sel")
    _curate("order", tmp_path / "sel", tmp_path / "sel.scores.npy", tmp_path / "ord")
    _curate("select", d / "corpus", d / "scores.npy", tmp_path / "vsel", "--view")
    _curate("order", tmp_path / "vsel", tmp_path / "vsel.scores.npy", tmp_path / "vord", "--view")
    vord = open_dataset(tmp_path / "vord")
    assert isinstance(vord, DatasetView) and vord.source == str(d / "corpus")
    sel, order = np.load(tmp_path / "sel.indices.npy"), np.load(tmp_path / "ord.indices.npy")
    assert np.array_equal(vord.indices, sel[order])  # straight into the original source
    corpus_ds, ord_ds = IndexedDataset(d / "corpus"), IndexedDataset(tmp_path / "ord")
    assert _read_all(vord) == _read_all(ord_ds) == [corpus_ds[int(i)].tolist() for i in sel[order]]
    assert np.array_equal(vord.sequence_lengths, ord_ds.sequence_lengths)
    assert np.array_equal(vord.document_indices, ord_ds.document_indices)
    assert vord.num_tokens == ord_ds.num_tokens and vord.dtype == ord_ds.dtype
    k = len(vord) // 3
    assert np.array_equal(vord.span(k, 2 * k), ord_ds.span(k, 2 * k))
    assert np.array_equal(np.load(tmp_path / "vord.scores.npy"), np.load(tmp_path / "ord.scores.npy"))
    lqs("materialize", "--data", tmp_path / "vord", "--out", tmp_path / "mord")
    _same_files(tmp_path / "ord", tmp_path / "mord", (".bin", ".idx", ".scores.npy", ".meta.jsonl"))
    assert json.load(open(tmp_path / "mord.stats.json"))["source"] == str(d / "corpus")


def _rewrite(prefix, change):
    """Write the dataset at ``prefix`` again with ``change(list of sequences)`` applied."""
    ds = IndexedDataset(prefix)
    seqs = change([ds[i].copy() for i in range(len(ds))])
    dtype = ds.dtype
    del ds
    with IndexedDatasetWriter(prefix, dtype) as w:
        for s in seqs:
            w.add_document(s)


def _other_tokens(seqs):
    seqs[len(seqs) // 2][0] ^= 1  # one token of one sequence: the same sizes, another content
    return seqs


CHANGES = {"other tokens": _other_tokens, "fewer sequences": lambda seqs: seqs[:-1]}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_view_of_a_changed_source_is_refused(corpus, tmp_path, change):
    d, _ = corpus
    for s in (".bin", ".idx", ".stats.json"):
        shutil.copy(f"{d}/corpus{s}", tmp_path / f"src{s}")
    _curate("order", tmp_path / "src", d / "scores.npy", tmp_path / "v", "--view")
    os.utime(tmp_path / "src.bin")  # touching it changes nothing
    assert len(open_dataset(tmp_path / "v")) == len(IndexedDataset(tmp_path / "src"))
    _rewrite(tmp_path / "src", CHANGES[change])
    with pytest.raises(LQSError, match="changed since the view was written"):
        open_dataset(tmp_path / "v")
    proc = run_lqs("materialize", "--data", tmp_path / "v", "--out", tmp_path / "m", check=False, env=ONE_THREAD)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "changed since the view was written" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "m.bin")


def test_the_output_rule_protects_a_views_source(corpus, tmp_path, capsys):
    d, _ = corpus
    for s in (".bin", ".idx"):
        shutil.copy(f"{d}/corpus{s}", tmp_path / f"src{s}")
    _curate("select", tmp_path / "src", d / "scores.npy", tmp_path / "v", "--view")
    for argv in (
        ["materialize", "--data", tmp_path / "v", "--out", tmp_path / "src"],
        ["order", "--data", tmp_path / "v", "--scores", tmp_path / "v.scores.npy", "--method", "sorting"]
        + ["--out", tmp_path / "src", "--view"],
        ["sample-proxy", "--data", tmp_path / "v", "--num", "2", "--out", tmp_path / "src"],
    ):
        assert main([str(a) for a in argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the source of the view" in err[0], err
    assert IndexedDataset(tmp_path / "src").num_tokens > 0 and not os.path.exists(tmp_path / "src.view.json")


@pytest.fixture(scope="module")
def pair(corpus, tmp_path_factory):
    """The same ordered selection as a composed view and as a copy."""
    d, tok = corpus
    t = tmp_path_factory.mktemp("pair")
    _curate("select", d / "corpus", d / "scores.npy", t / "sel")
    _curate("order", t / "sel", t / "sel.scores.npy", t / "copy")
    _curate("select", d / "corpus", d / "scores.npy", t / "vsel", "--view")
    _curate("order", t / "vsel", t / "vsel.scores.npy", t / "view", "--view")
    return t, d, tok


def test_pretrain_on_a_view_gives_the_copys_losses_bit_for_bit(pair):
    t, d, tok = pair
    losses = {}
    for name in ("view", "copy"):
        # a blend of the selection and the corpus (Megatron's weighted --data), read with the sample index's sizes
        data = f"0.7 {t / name} 0.3 {d / 'corpus'}"
        args = ["pretrain", "--model-config", "tiny", "--tokenizer", tok, "--data", data, "--steps", "4"]
        args += ["--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3"]
        args += ["--log-interval", "1", "--seed", "5", "--valid-data", t / name, "--eval-samples", "4"]
        run_lqs(*args, "--out", t / f"ckpt-{name}", env=ONE_THREAD)
        recs = [json.loads(x) for x in open(t / f"ckpt-{name}" / "metrics.jsonl")]
        losses[name] = [(r.get("loss"), r.get("valid_loss")) for r in recs if "loss" in r or "valid_loss" in r]
    assert len(losses["copy"]) >= 4 and losses["view"] == losses["copy"]


def test_sample_stream_and_evaluate_read_a_view_as_the_copy(pair):
    import torch

    from lqs_megatron.models.config import load_model_config
    from lqs_megatron.models.decoder import Decoder
    from lqs_megatron.training.data import SampleStream
    from lqs_megatron.training.evaluate import evaluate_dataset

    t, d, _ = pair
    for blend in (None, (0.25, 0.75)):
        streams = []
        for name in ("view", "copy"):
            parts = [str(t / name)] if blend is None else [f"{blend[0]} {t / name} {blend[1]} {d / 'corpus'}"]
            streams.append(SampleStream(parts, seq_length=24, num_samples=40, shuffle=True, seed=3))
        assert torch.equal(streams[0].batch(range(40)), streams[1].batch(range(40)))
    torch.manual_seed(0)
    model = Decoder(load_model_config("tiny", vocab_size=512)).eval()
    got = [evaluate_dataset(model, str(t / n), 40, batch_size=3, progress=False) for n in ("view", "copy")]
    assert got[0] == got[1] and got[0]["examples"] == len(IndexedDataset(t / "copy"))


def test_sample_proxy_export_merge_and_report_on_a_view_equal_the_copy(pair, tmp_path):
    t, d, tok = pair
    for name in ("view", "copy"):
        out = tmp_path / name
        out.mkdir()
        lqs("sample-proxy", "--data", t / name, "--num", "7", "--seed", "4", "--out", out / "proxy")
        lqs("export-jsonl", "--data", t / name, "--tokenizer", tok, "--scores", t / f"{name}.scores.npy", "--out",
            out / "export.jsonl")  # fmt: skip
        lqs("merge", "--data", t / name, d / "corpus", t / name, "--out", out / "merged")
        lqs("report", "--scores", t / f"{name}.scores.npy", "--data", t / name, "--by", "source", "--out", out / "rep")
    a, b = tmp_path / "view", tmp_path / "copy"
    _same_files(a / "proxy", b / "proxy", (".bin", ".idx", ".indices.npy", ".meta.jsonl"))
    _same_files(a / "merged", b / "merged", (".bin", ".idx", ".meta.jsonl"))
    assert open(a / "export.jsonl", "rb").read() == open(b / "export.jsonl", "rb").read()
    assert os.path.getsize(a / "merged.meta.jsonl") > 0
    ra, rb = json.load(open(a / "rep.json")), json.load(open(b / "rep.json"))
    assert ra["groups"] == rb["groups"] and ra["overall"] == rb["overall"]


def test_score_on_a_view_equals_the_copy(pair, tmp_path, tiny_tokenizer):
    from lqs_megatron.scorer.model import build_scorer, save_scorer

    t, _, _ = pair
    scorer, cfg, tok = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=48, seed=3)
    (tmp_path / "scorer").mkdir()
    save_scorer(scorer, cfg, tok, tmp_path / "scorer")
    for name in ("view", "copy"):
        args = ["score", "--scorer", tmp_path / "scorer", "--data", t / name, "--out", tmp_path / f"s-{name}"]
        run_lqs(*args, "--part-size", "16", env=ONE_THREAD)
    a, b = np.load(tmp_path / "s-view" / "scores.npy"), np.load(tmp_path / "s-copy" / "scores.npy")
    assert a.shape == (len(IndexedDataset(t / "copy")),) and np.array_equal(a, b)


def test_annotation_sets_and_scorer_data_read_a_view_as_the_copy(pair, tmp_path):
    """``annotate``'s example sets (``--train``/``--target``/``--proxy``) and ``prepare-scorer-data`` on a view."""
    from lqs_megatron.lqs.examples import ExampleSet

    t, _, _ = pair
    sets = {n: ExampleSet(str(t / n), "--proxy", max_length=20) for n in ("view", "copy")}
    assert np.array_equal(sets["view"].lengths(), sets["copy"].lengths())
    for s in sets.values():
        s.validate(512)
    idx = np.random.default_rng(1).permutation(len(sets["copy"]))[:9]
    a, b = sets["view"].batch(idx), sets["copy"].batch(idx)
    assert all(torch_equal(getattr(a, k), getattr(b, k)) for k in ("input_ids", "labels", "loss_mask", "indices"))
    with pytest.raises(LQSError, match="outside the model's vocabulary"):
        sets["view"].validate(int(IndexedDataset(t / "copy")[0].max()))  # the slow path, on the view's sequences
    for n in ("view", "copy"):
        lqs("prepare-scorer-data", "--proxy", t / n, "--scores", t / f"{n}.scores.npy", "--out", tmp_path / n)
    for f in ("train.bin", "train.idx", "valid.bin", "valid.idx", "train_scores.npy", "valid_indices.npy"):
        assert (tmp_path / "view" / f).read_bytes() == (tmp_path / "copy" / f).read_bytes(), f


def torch_equal(x, y) -> bool:
    import torch

    return torch.equal(torch.as_tensor(x), torch.as_tensor(y))


def test_a_view_and_a_copy_replace_each_other_at_one_prefix(corpus, tmp_path):
    """Writing a view where a copy was removes the copy's tokens (a .bin/.idx pair would win), and the other way
    round; what opens is always the latest output."""
    d, _ = corpus
    _curate("select", d / "corpus", d / "scores.npy", tmp_path / "out")
    copy = _read_all(IndexedDataset(tmp_path / "out"))
    _curate("order", d / "corpus", d / "scores.npy", tmp_path / "out", "--view")
    assert not os.path.exists(tmp_path / "out.bin") and not os.path.exists(tmp_path / "out.idx")
    assert not os.path.exists(tmp_path / "out.meta.jsonl")  # the copy's provenance went with it
    view = open_dataset(tmp_path / "out")
    assert view.is_view and len(view) == len(IndexedDataset(d / "corpus")) != len(copy)
    _curate("select", d / "corpus", d / "scores.npy", tmp_path / "out")
    assert not os.path.exists(tmp_path / "out.view.json") and _read_all(open_dataset(tmp_path / "out")) == copy
