"""`lqs report` on a tokenized corpus with a `source` sidecar (lqs tokenize --keep-fields source)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lqs_megatron.data.datasets.meta import write_meta
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.report import build_report, report_if_sidecar
from tests.conftest import demo_texts
from tests.lqs.conftest import write_dataset
from tests.utils import run_lqs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("report")
    texts = demo_texts()[:30]
    rows = [{"text": t, "source": ["manual", "faq", "junk"][i % 3]} for i, t in enumerate(texts)]
    rows[4].pop("source")  # a record without the field: its group is "(none)"
    (d / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_lqs(
        "tokenize",
        "--input",
        d / "c.jsonl",
        "--tokenizer",
        tiny_tokenizer,
        "--out",
        d / "corpus",
        "--keep-fields",
        "source",
        "--workers",
        "1",
    )
    rng = np.random.default_rng(0)
    shift = {"manual": 2.0, "faq": 0.0}
    scores = rng.normal(size=len(rows)) + np.array([shift.get(r.get("source"), -2.0) for r in rows])
    np.save(d / "scores.npy", scores)
    return d, rows, scores


@pytest.mark.slow
def test_report_by_source_prints_groups_texts_and_writes_png(corpus):
    d, rows, scores = corpus
    proc = run_lqs("report", "--scores", d / "scores.npy", "--data", d / "corpus", "--by", "source", "--top", "2")
    out = proc.stdout
    rep = json.loads((d / "scores.report.json").read_text())
    src = np.array([r.get("source") or "(none)" for r in rows], dtype=object)
    assert list(rep["groups"]) == ["manual", "faq", "junk", "(none)"][: len(rep["groups"])]  # by mean, descending
    for name, g in rep["groups"].items():
        assert g["count"] == int((src == name).sum()) and g["mean"] == pytest.approx(scores[src == name].mean())
        assert f"{name} " in out
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    assert rep["top"][0]["index"] == best and rep["bottom"][0]["index"] == worst
    assert rep["top"][0]["group"] == src[best]
    words = " ".join(rows[best]["text"].split())[:40]
    assert rep["top"][0]["text"].startswith(words) and words in out  # decoded with the recorded tokenizer
    lengths = np.array([len(x) for x in _ds(d)], dtype=np.float64)
    from scipy.stats import spearmanr

    assert rep["spearman"]["length"] == pytest.approx(spearmanr(scores, lengths).statistic, abs=1e-12)
    assert "Spearman of the scores with: length" in out
    png = (d / "scores.report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (d / "scores.report.txt").read_text().startswith("scores ")


def _ds(d):
    from lqs_megatron.data.datasets.indexed import IndexedDataset

    ds = IndexedDataset(d / "corpus")
    return [ds[i] for i in range(len(ds))]


def test_report_errors_and_the_hook(corpus, tmp_path):
    d, rows, scores = corpus
    plain = write_dataset(tmp_path / "plain", [[1, 2, 3], [4, 5]])
    with pytest.raises(LQSError, match=r"--by source: .* has no sidecar .*keep-fields source"):
        build_report(np.zeros(2), plain, by="source")
    with pytest.raises(LQSError, match=r"no record .* has that field \(fields: source\)"):
        build_report(str(d / "scores.npy"), str(d / "corpus"), by="url")
    with pytest.raises(LQSError, match="3 scores for a dataset of 30 sequences"):
        build_report(np.zeros(3), str(d / "corpus"))
    assert report_if_sidecar(tmp_path / "r", np.zeros(2), plain) is None and not (tmp_path / "r.png").exists()
    write_meta(plain, [{"source": "x"}, {"source": None}])
    rep = report_if_sidecar(tmp_path / "r", np.array([1.0, 0.0]), plain)
    assert rep["by"] == "source" and set(rep["groups"]) == {"x", "(none)"} and (tmp_path / "r.png").is_file()
    proc = run_lqs("report", "--scores", d / "scores.npy", "--data", d / "corpus", "--by", "url", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lqs report: error: --by url")


def test_prepare_scorer_data_writes_the_report_when_a_sidecar_exists(corpus, tmp_path):
    from lqs_megatron.scorer.config import PrepareScorerConfig
    from lqs_megatron.scorer.data import prepare_scorer_data

    d, rows, scores = corpus
    prepare_scorer_data(PrepareScorerConfig(d / "corpus", d / "scores.npy", tmp_path / "sd", valid_num=5))
    rep = json.loads((tmp_path / "sd" / "report.json").read_text())
    assert rep["by"] == "source" and rep["groups"]["manual"]["count"] == 10 and rep["top"][0]["text"]
    assert (tmp_path / "sd" / "report.png").is_file() and (tmp_path / "sd" / "report.txt").is_file()


def test_report_over_a_proxy_sample_decodes_without_tokenizer_flag(corpus, tmp_path, capsys):
    """Issue 23 item 6: annotation scores are per proxy sequence; sample-proxy records its source's tokenizer."""
    from lqs_megatron.cli import main
    from lqs_megatron.data.datasets.indexed import IndexedDataset

    d, rows, _ = corpus
    seed = int(np.random.default_rng().integers(1 << 20))
    assert (
        main(
            [
                "sample-proxy",
                "--data",
                str(d / "corpus"),
                "--num",
                "12",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / "proxy"),
            ]
        )
        == 0
    )
    indices = np.load(tmp_path / "proxy.indices.npy")
    scores = np.random.default_rng().standard_normal(len(indices))
    np.save(tmp_path / "raw_scores.npy", scores)
    capsys.readouterr()
    assert (
        main(["report", "--scores", str(tmp_path / "raw_scores.npy"), "--data", str(tmp_path / "proxy"), "--top", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "no tokenizer known" not in out
    rep = json.loads((tmp_path / "raw_scores.report.json").read_text())
    best = int(np.argmax(scores))
    assert rep["top"][0]["index"] == best and len(IndexedDataset(tmp_path / "proxy")) == 12
    words = " ".join(rows[int(indices[best])]["text"].split())[:40]
    assert rep["top"][0]["text"].startswith(words) and words in out
