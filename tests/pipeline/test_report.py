import numpy as np
import pytest

from lqs_megatron.utils.correlation import auc


def _auc_pairs(scores, pos):
    """The definition: P(score of a positive > score of a negative), ties 1/2."""
    p, n = scores[pos], scores[~pos]
    wins = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
    return wins / (len(p) * len(n))


@pytest.mark.parametrize("n", [2, 17, 300])
def test_auc_equals_pairwise_definition_with_ties(n):
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    pos = rng.random(n) < 0.4
    pos[0], pos[-1] = True, False
    assert auc(scores, pos) == pytest.approx(_auc_pairs(scores, pos), abs=1e-12)
    assert auc(-scores, pos) == pytest.approx(1 - _auc_pairs(scores, pos), abs=1e-12)


def test_auc_extremes():
    s = np.arange(10.0)
    assert auc(s, s >= 5) == 1.0 and auc(s, s < 5) == 0.0
    assert np.isnan(auc(s, np.ones(10, bool)))


def _fake_run(tmp_path, rng, field="source", pretrain=None, losses=None):
    """A finished run's files as the steps write them (annotate.json, scores, selections, the corpus sidecar;
    ``losses``: ``{run: final loss}`` printed by its evaluate step, else random)."""
    import json

    from lqs_megatron.pipeline.config import config_from_dict
    from lqs_megatron.pipeline.plan import Plan

    data = {"workdir": "run", "data": {"corpus": ["c.parquet"], "target": "t.jsonl", "keep_fields": [field]}}
    plan = Plan(config_from_dict({**data, "pretrain": pretrain or {}}, tmp_path))
    n = int(rng.integers(200, 400))
    sources = rng.choice(["wiki", "forum", "code"], size=n, p=[0.5, 0.3, 0.2])
    plan.corpus.parent.mkdir(parents=True)
    with open(f"{plan.corpus}.meta.jsonl", "w") as f:
        f.writelines(json.dumps({field: str(s)}) + "\n" for s in sources)
    lrs = {"lqs": float(rng.uniform(0.001, 0.1)), "pds": float(rng.uniform(0.001, 0.1))}
    for m in plan.methods:
        d = plan.annotate_dir(m)
        d.mkdir(parents=True)
        warnings = [] if m == "lqs" else [{"kind": "target_rise", "message": "rose"}]
        rec = {"arguments": {"lr": lrs[m]}, "health": {"ok": m == "lqs", "warnings": warnings}}
        if m == "lqs":
            rec["lr_probe"] = {"chosen": lrs[m]}
        (d / "annotate.json").write_text(json.dumps(rec))
        plan.corpus_scores(m).parent.mkdir(parents=True)
        np.save(plan.corpus_scores(m), rng.normal(size=n))
    kept = {}
    for arm in plan.arms:
        kept[arm] = np.sort(rng.choice(n, size=n // 2, replace=False))
        plan.selected(arm).parent.mkdir(parents=True)
        np.save(f"{plan.selected(arm)}.indices.npy", kept[arm])
    (plan.w / "scores" / "lqs" / "report.txt").write_text("report")

    class Runner:
        timings = {}

        def stdout_of(self, name):
            loss = losses[name.removeprefix("evaluate-")] if losses else float(rng.uniform(3, 5))
            return json.dumps({"loss": loss, "examples": 8}) + "\n"

    return plan, Runner(), sources, kept, lrs


def test_closing_summary_names_health_lr_kept_shares_and_the_hf_exports(tmp_path):
    from lqs_megatron.pipeline.results import collect, format_table

    rng = np.random.default_rng()
    plan, runner, sources, kept, lrs = _fake_run(tmp_path, rng)
    text = format_table(collect(plan, runner, None))
    lines = text.splitlines()
    lqs = next(ln for ln in lines if ln.strip().startswith("lqs ") and "health" in ln)
    pds = next(ln for ln in lines if ln.strip().startswith("pds ") and "health" in ln)
    assert "health ok" in lqs and f"learning rate {lrs['lqs']:g} (chosen by --lr auto)" in lqs
    assert "health WARNING: target_rise" in pds and f"learning rate {lrs['pds']:g};" in pds
    for arm in ("lqs", "pds", "random"):
        assert f"model (Hugging Face) {plan.w / 'final' / arm / 'hf'}" in text
        assert f"{arm}: selection {plan.w / 'curated' / arm / 'selected'}" in text
    assert f"report {plan.w / 'scores' / 'lqs' / 'report.txt'}" in text
    head = lines.index(next(ln for ln in lines if ln.startswith("Kept share by source")))
    assert lines[head + 1].split() == ["source", "documents", "lqs", "pds", "random"]
    for row in lines[head + 2 : head + 5]:
        name, docs, *shares = row.split()
        assert int(docs) == (sources == name).sum()
        for arm, share in zip(("lqs", "pds", "random"), shares):
            expected = 100 * np.isin(np.flatnonzero(sources == name), kept[arm]).mean()
            assert float(share.rstrip("%")) == pytest.approx(expected, abs=0.051)


def test_closing_summary_has_no_kept_share_without_a_source_field(tmp_path):
    from lqs_megatron.pipeline.results import collect, format_table

    plan, runner, *_ = _fake_run(tmp_path, np.random.default_rng())
    n = len(np.load(plan.corpus_scores("lqs")))
    with open(f"{plan.corpus}.meta.jsonl", "w") as f:
        f.writelines('{"url": "x"}\n' for _ in range(n))
    text = format_table(collect(plan, runner, None))
    assert "Kept share" not in text and "health ok" in text


def test_kept_share_groups_by_the_first_kept_field_without_source(tmp_path):
    """The demo keeps ``kind`` (clean or the degradation): its kept shares are by kind."""
    from lqs_megatron.pipeline.results import collect, format_table

    plan, runner, sources, kept, _ = _fake_run(tmp_path, np.random.default_rng(), field="kind")
    res = collect(plan, runner, None)
    assert "Kept share by kind (selected / documents of the kind):" in format_table(res)
    for arm in plan.arms:
        for name, share in res["kept_share"]["arms"][arm].items():
            assert share == pytest.approx(np.isin(np.flatnonzero(sources == name), kept[arm]).mean())


def test_closing_table_gives_seeds_the_paired_difference_its_noise_and_the_token_ratio(tmp_path):
    """The demo's table (baseline seeds 2 and 3, the arms seed 2): random's mean +- std, each arm's difference from
    random's seed-2 run, "(within noise)" when it is within 2 x sqrt(2) x random's std, and the share of random's
    tokens after which the arm's curve (metrics.jsonl) reached random's final loss, by hand."""
    import json

    from lqs_megatron.pipeline.results import collect, format_table

    rng = np.random.default_rng()
    r2, r3 = 5.0 + rng.uniform(-0.01, 0.01), 5.1 + rng.uniform(-0.01, 0.01)
    losses = {"random": r2, "random-s3": r3, "lqs": r2 - 0.5, "pds": r2 + 0.01}  # lqs far beyond the noise, pds not
    pretrain = {"seed": 2, "baseline_seeds": [2, 3], "steps": 40, "eval_interval": 10}
    plan, runner, *_ = _fake_run(tmp_path, rng, pretrain=pretrain, losses=losses)
    assert plan.runs["random"] == [(2, "random"), (3, "random-s3")] and plan.runs["lqs"] == [(2, "lqs")]
    per_step = 16 * 128
    for run, final in losses.items():  # straight curves from 7.0 at step 10 to the final loss at step 40
        ck = plan.final_ckpt(run)
        ck.mkdir(parents=True)
        recs = [{"step": k, "valid_loss": 7.0 + (final - 7.0) * (k - 10) / 30} for k in (10, 20, 30, 40)]
        (ck / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = collect(plan, runner, None)
    text = format_table(res)
    rows = {ln.split()[0]: ln for ln in text.splitlines()[2:6] if ln.strip()}
    std = np.std([r2, r3], ddof=1)
    assert f"{(r2 + r3) / 2:.4f} +- {std:.4f}" in rows["random"] and " 2,3 " in rows["random"]
    assert f"{losses['lqs'] - r2:+.4f}" in rows["lqs"] and "within noise" not in rows["lqs"]
    assert f"{losses['pds'] - r2:+.4f} (within noise)" in rows["pds"]
    assert res["arms"]["pds"]["comparison"]["noise"] == pytest.approx(np.sqrt(2) * std)
    # lqs: the straight line from 7.0 (10 steps) to r2 - 0.5 (40 steps) crosses r2 at step 10 + 30 * (7 - r2) / 2.5
    ratio = (10 + 30 * (7.0 - r2) / (7.0 - losses["lqs"])) * per_step / (40 * per_step)
    assert f"{ratio:.2f}" in rows["lqs"] and "> 1 (not reached)" in rows["pds"]
    assert res["arms"]["lqs"]["comparison"]["token_ratio"]["mean"] == pytest.approx(ratio)
    assert (plan.w / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "target-loss curves" in text
