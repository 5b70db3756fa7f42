"""`lqs select` / `lqs order` end to end: datasets and jsonl in and out, failure modes, kill safety."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lqs_megatron.curate.ordering import order
from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from tests.curate.test_ordering import ref_passes, ref_sorted
from tests.curate.test_selection import ref_top_k, ref_top_r
from tests.utils import run_lqs


def make_dataset(prefix, rng, n_docs=9, dtype=np.uint16):
    """Random sequences (several per document sometimes); returns the list of sequences."""
    seqs = []
    with IndexedDatasetWriter(prefix, dtype) as w:
        for _ in range(n_docs):
            for _ in range(int(rng.integers(1, 4))):
                seq = rng.integers(0, 60000 if dtype == np.uint16 else 2**31 - 1, int(rng.integers(1, 30)))
                w.add_item(seq)
                seqs.append(seq.astype(dtype))
            w.end_document()
    return seqs


def outputs(prefix):
    return [
        p
        for p in (f"{prefix}.bin", f"{prefix}.idx", f"{prefix}.scores.npy", f"{prefix}.indices.npy")
        if os.path.exists(p)
    ]


def check_output(prefix, seqs, scores, expected_indices):
    ds = IndexedDataset(prefix)
    idx = np.load(f"{prefix}.indices.npy")
    out_scores = np.load(f"{prefix}.scores.npy")
    assert idx.dtype == np.int64 and idx.tolist() == list(expected_indices)
    assert out_scores.dtype == scores.dtype and np.array_equal(out_scores, scores[idx])
    assert len(ds) == len(idx) and ds.dtype == seqs[0].dtype
    for j, i in enumerate(idx):
        assert np.array_equal(ds[j], seqs[i]), (j, i)
    assert ds.document_indices.tolist() == list(range(len(idx) + 1))  # each kept sequence its own document


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(5)
    seqs = make_dataset(tmp_path / "corpus", rng)
    scores = (np.round(rng.standard_normal(len(seqs)), 1)).astype(np.float32)  # rounded: ties
    np.save(tmp_path / "scores.npy", scores)
    return tmp_path, seqs, scores


def test_select_then_order_round_trip(corpus):
    d, seqs, scores = corpus
    lst = scores.astype(np.float64).tolist()
    run_lqs(
        "select",
        "--data",
        d / "corpus",
        "--scores",
        d / "scores.npy",
        "--method",
        "top-r",
        "--r",
        "0.5",
        "--out",
        d / "sel",
    )
    kept = ref_top_r(lst, 0.5)
    assert len(kept) == len(seqs) // 2
    check_output(d / "sel", seqs, scores, kept)

    run_lqs(
        "order",
        "--data",
        d / "sel",
        "--scores",
        d / "sel.scores.npy",
        "--method",
        "folding",
        "--layers",
        "3",
        "--out",
        d / "ord",
    )
    sel_scores = scores[kept]
    perm = ref_passes(ref_sorted(sel_scores.astype(np.float64).tolist()), 3, False)
    sel_seqs = [seqs[i] for i in kept]
    check_output(d / "ord", sel_seqs, sel_scores, perm)
    # composed: the corpus index of each ordered sequence
    composed = np.load(d / "sel.indices.npy")[np.load(d / "ord.indices.npy")]
    ds = IndexedDataset(d / "ord")
    assert all(np.array_equal(ds[j], seqs[i]) for j, i in enumerate(composed))


def test_other_methods(corpus):
    d, seqs, scores = corpus
    lst = scores.astype(np.float64).tolist()
    n = len(seqs)
    for args, expected in (
        (("select", "--method", "top-k", "--k", "4"), ref_top_k(lst, 4)),
        (("select", "--method", "top-k", "--k", str(n)), list(range(n))),
        (("select", "--method", "top-k", "--k", "0"), []),
        (("select", "--method", "top-r", "--r", "1"), list(range(n))),
        (("select", "--method", "threshold", "--threshold", "0.2"), [i for i, s in enumerate(lst) if s >= 0.2]),
        (("order", "--method", "sorting"), ref_sorted(lst)),
        (("order", "--method", "sorting", "--descending"), ref_sorted(lst, True)),
        (("order", "--method", "shuffle", "--seed", "3"), np.random.default_rng(3).permutation(n).tolist()),
        (("order", "--method", "zigzag", "--layers", "2"), ref_passes(ref_sorted(lst), 2, True)),
        (
            tuple(
                "order --method segment --front-ratio 0.2 --back-ratio 0.3 --front-from high --back-from low "
                "--seed 4".split()
            ),
            order(scores, "segment", front_ratio=0.2, back_ratio=0.3, front_from="high", back_from="low", seed=4),
        ),
        (
            ("order", "--method", "folding", "--layers", "2", "--jitter", "3", "--seed", "5"),
            order(scores, "folding", jitter=3, layers=2, seed=5),
        ),
        (("order", "--method", "folding", "--layers", "2", "--jitter", "1"), ref_passes(ref_sorted(lst), 2, False)),
    ):
        out = d / f"out_{args[2]}_{args[-1]}"
        run_lqs(*args[:1], "--data", d / "corpus", "--scores", d / "scores.npy", *args[1:], "--out", out)
        check_output(out, seqs, scores, expected)


def test_jsonl_in_and_out(tmp_path):
    rng = np.random.default_rng(2)
    records = [{"text": f"doc {i} é", "score": float(np.round(rng.standard_normal(), 2)), "id": i} for i in range(23)]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines[4] = lines[4].replace(", ", ",  ")  # odd spacing survives: records are copied byte for byte
    src = tmp_path / "scored.jsonl"
    src.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")
    lst = [r["score"] for r in records]

    run_lqs("select", "--data", src, "--method", "top-r", "--r", "0.5", "--out", tmp_path / "sel.jsonl")
    kept = ref_top_r(lst, 0.5)
    assert (tmp_path / "sel.jsonl").read_text(encoding="utf-8").splitlines() == [lines[i] for i in kept]
    assert np.load(tmp_path / "sel.indices.npy").tolist() == kept
    assert np.load(tmp_path / "sel.scores.npy").tolist() == [lst[i] for i in kept]

    run_lqs("order", "--data", tmp_path / "sel.jsonl", "--method", "folding", "--out", tmp_path / "ord.jsonl")
    perm = ref_passes(ref_sorted([lst[i] for i in kept]), 3, False)
    assert (tmp_path / "ord.jsonl").read_text(encoding="utf-8").splitlines() == [lines[kept[j]] for j in perm]

    # scores from a .npy instead of the field: each output record carries its new score
    new = rng.standard_normal(len(records)).astype(np.float32)
    np.save(tmp_path / "new.npy", new)
    run_lqs(
        "order", "--data", src, "--scores", tmp_path / "new.npy", "--method", "sorting", "--out", tmp_path / "re.jsonl"
    )
    rows = [json.loads(x) for x in (tmp_path / "re.jsonl").read_text(encoding="utf-8").splitlines()]
    order = ref_sorted(new.astype(np.float64).tolist())
    assert [r["id"] for r in rows] == order
    assert np.array_equal(np.array([r["score"] for r in rows], dtype=np.float32), new[order])
    assert rows[0]["text"] == records[order[0]]["text"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("short_scores", "4 scores for a dataset of"),
        ("nan_scores", "not finite (first at index 2"),
        ("missing_data", "missing"),
        ("r_high", "--r must be in [0, 1], got 1.5"),
        ("r_low", "--r must be in [0, 1], got -0.5"),
        ("k_high", "--k must be in [0,"),
        ("no_scores", "--scores FILE.npy is required"),
        ("wrong_flag", "--layers does not apply to --method sorting"),
        ("seed_without_jitter", "--seed does not apply to --method folding"),
        ("bad_jitter", "--jitter must be an integer >= 0, got -2"),
        ("bad_segment", "--front-ratio + --back-ratio must be <= 1, got 0.7 + 0.4"),
        ("select_wrong_flag", "--k is for --method top-k"),
        ("missing_param", "--method threshold needs --threshold"),
        ("jsonl_out", "is a jsonl file but --data is an indexed dataset"),
        ("same_out", "is the input dataset"),
    ],
)
def test_bad_inputs(corpus, case, message):
    d, seqs, scores = corpus
    n = len(seqs)
    np.save(d / "short.npy", scores[:4])
    bad = scores.copy()
    bad[2] = np.nan
    np.save(d / "nan.npy", bad)
    base = ["--data", d / "corpus", "--scores", d / "scores.npy", "--out", d / "out"]
    args = {
        "short_scores": [
            "select",
            "--data",
            d / "corpus",
            "--scores",
            d / "short.npy",
            "--method",
            "top-k",
            "--k",
            "1",
            "--out",
            d / "out",
        ],
        "nan_scores": [
            "order",
            "--data",
            d / "corpus",
            "--scores",
            d / "nan.npy",
            "--method",
            "folding",
            "--out",
            d / "out",
        ],
        "missing_data": [
            "select",
            "--data",
            d / "nope",
            "--scores",
            d / "scores.npy",
            "--method",
            "top-r",
            "--r",
            "0.5",
            "--out",
            d / "out",
        ],
        "r_high": ["select", *base, "--method", "top-r", "--r", "1.5"],
        "r_low": ["select", *base, "--method", "top-r", "--r", "-0.5"],
        "k_high": ["select", *base, "--method", "top-k", "--k", str(n + 1)],
        "no_scores": ["select", "--data", d / "corpus", "--method", "top-k", "--k", "1", "--out", d / "out"],
        "wrong_flag": ["order", *base, "--method", "sorting", "--layers", "3"],
        "seed_without_jitter": ["order", *base, "--method", "folding", "--seed", "3"],
        "bad_jitter": ["order", *base, "--method", "stair", "--jitter", "-2"],
        "bad_segment": ["order", *base, "--method", "segment", "--front-ratio", "0.7", "--back-ratio", "0.4"],
        "select_wrong_flag": ["select", *base, "--method", "top-r", "--r", "0.5", "--k", "3"],
        "missing_param": ["select", *base, "--method", "threshold"],
        "jsonl_out": [
            "select",
            "--data",
            d / "corpus",
            "--scores",
            d / "scores.npy",
            "--method",
            "top-k",
            "--k",
            "1",
            "--out",
            d / "out.jsonl",
        ],
        "same_out": [
            "order",
            "--data",
            d / "corpus",
            "--scores",
            d / "scores.npy",
            "--method",
            "sorting",
            "--out",
            d / "corpus",
        ],
    }[case]
    proc = run_lqs(*args, check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert outputs(d / "out") == [] and not (d / "out.jsonl").exists()
    assert IndexedDataset(d / "corpus").sequence_lengths.tolist() == [len(s) for s in seqs]  # input untouched


def test_bad_jsonl_scores(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "score": 1}\n{"text": "b", "score": "high"}\n', encoding="utf-8")
    proc = run_lqs("select", "--data", src, "--method", "top-k", "--k", "1", "--out", tmp_path / "o.jsonl", check=False)
    assert proc.returncode == 1 and f"{src}:2: field 'score' must be a number" in proc.stderr, proc.stderr
    src.write_text('{"text": "a", "score": 1}\n{"text": "b"}\n', encoding="utf-8")
    proc = run_lqs("order", "--data", src, "--method", "sorting", "--out", tmp_path / "o.jsonl", check=False)
    assert proc.returncode == 1 and f"{src}:2: missing field 'score'" in proc.stderr, proc.stderr
    src.write_text('{"text": "a", "score": NaN}\n', encoding="utf-8")
    proc = run_lqs("order", "--data", src, "--method", "sorting", "--out", tmp_path / "o.jsonl", check=False)
    assert proc.returncode == 1 and f"{src}:1: field 'score' is nan" in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_killed_write_leaves_no_finished_output(corpus, monkeypatch):
    """A crash after the sidecars (and before the dataset) leaves no complete-looking pair, even over an old one."""
    from lqs_megatron.curate import apply
    from lqs_megatron.curate.selection import select

    d, seqs, scores = corpus
    run_lqs(
        "select",
        "--data",
        d / "corpus",
        "--scores",
        d / "scores.npy",
        "--method",
        "top-k",
        "--k",
        "3",
        "--out",
        d / "out",
    )
    assert (d / "out.idx").exists()

    def crash(*a, **k):
        raise KeyboardInterrupt  # as a kill would, mid-write

    monkeypatch.setattr("lqs_megatron.data.datasets.subset.write_subset", crash)
    with pytest.raises(KeyboardInterrupt):
        apply.curate_dataset(d / "corpus", d / "scores.npy", d / "out", lambda s: select(s, "top-k", k=5))
    assert not (d / "out.idx").exists()  # the old output no longer looks finished
    assert not [p for p in os.listdir(d) if ".tmp-" in p]
