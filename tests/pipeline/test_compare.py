"""Arms compared over seeds (pipeline/compare.py) against references computed another way: a dense
materialised interpolation, numpy's trapezoid, differences taken by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lqs_megatron.pipeline.compare import (
    compare_arms,
    format_ratio,
    mean_gap,
    plot_curves,
    spread,
    tokens_to_reach,
    valid_curve,
)


def _curve(rng, n=10, start=7.0, end=5.0):
    t = np.arange(1, n + 1, dtype=np.float64) * 2048
    loss = np.linspace(start, end, n) + rng.normal(0, 0.05, n)
    return t, loss


def test_tokens_to_reach_is_the_first_crossing_of_the_piecewise_linear_curve():
    rng = np.random.default_rng()
    for _ in range(50):
        t, lo = _curve(rng, n=int(rng.integers(2, 15)))
        level = float(rng.uniform(lo.min(), lo.max()))
        # reference: the curve materialised on a dense grid, the first grid point at or below the level
        dense = np.linspace(t[0], t[-1], 200001)
        ref = dense[np.argmax(np.interp(dense, t, lo) <= level)] if lo[0] > level else t[0]
        got = tokens_to_reach(t, lo, level)
        assert abs(got - ref) <= (t[-1] - t[0]) / 200000 * 1.01 + 1e-9, (got, ref)
    t, lo = _curve(rng)
    assert math.isnan(tokens_to_reach(t, lo, lo.min() - 0.1))
    assert tokens_to_reach(t, lo, lo[0] + 1.0) == t[0]


def test_mean_gap_is_the_area_between_the_curves_over_the_tokens():
    rng = np.random.default_rng()
    t, a = _curve(rng)
    _, b = _curve(rng)
    trapz = getattr(np, "trapezoid", None) or np.trapz
    assert abs(mean_gap(t, a, b) - trapz(a - b, t) / (t[-1] - t[0])) < 1e-12
    assert math.isnan(mean_gap(t[:1], a[:1], b[:1]))


def test_compare_arms_pairs_seeds_and_measures_the_noise(tmp_path):
    rng = np.random.default_rng()
    seeds = [1, 2, 3]
    base = {s: float(rng.normal(6.0, 0.05)) for s in seeds}
    good = {s: base[s] - 0.3 + float(rng.normal(0, 0.01)) for s in seeds}  # better on every seed
    same = {s: base[s] + float(rng.normal(0, 0.01)) for s in seeds}
    one = {2: base[2] + 0.001}  # one seed: the noise is sqrt(2) x the baseline's std
    curves = {}
    for arm, fin in (("random", base), ("good", good)):
        curves[arm] = {}
        for s in seeds:
            t = np.arange(1, 11, dtype=np.float64) * 1000
            lo = np.linspace(7.5, fin[s], 10)
            curves[arm][s] = (t, lo)
    out = compare_arms({"random": base, "good": good, "same": same, "one": one}, curves)
    diffs = [good[s] - base[s] for s in seeds]
    assert out["good"]["diff"]["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert out["good"]["diff"]["std"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-12)
    assert out["good"]["within_noise"] is False and out["random"]["loss"]["n"] == 3
    assert out["one"]["noise"] == pytest.approx(math.sqrt(2) * np.std(list(base.values()), ddof=1))
    assert out["one"]["within_noise"] is True and out["one"]["diff"]["n"] == 1
    # tokens to the baseline's final loss of the same seed, by hand from the straight-line curves
    ratios = []
    for s in seeds:
        t, lo = curves["good"][s]
        i = int(np.argmax(lo <= base[s]))
        ratios.append((t[i - 1] + (t[i] - t[i - 1]) * (lo[i - 1] - base[s]) / (lo[i - 1] - lo[i])) / 10000)
    r = out["good"]["token_ratio"]
    assert r["mean"] == pytest.approx(np.mean(ratios), abs=1e-12) and r["reached"] == r["seeds"] == 3
    assert "reached" not in format_ratio(r) and format_ratio({**r, "reached": 0}) == "> 1 (not reached)"
    gaps = [mean_gap(curves["good"][s][0], curves["good"][s][1], curves["random"][s][1]) for s in seeds]
    assert out["good"]["area"]["mean"] == pytest.approx(np.mean(gaps)) and out["good"]["area"]["mean"] < 0
    png = plot_curves(curves, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_valid_curve_reads_the_last_record_of_each_step(tmp_path):
    recs = [{"step": 1, "loss": 9.0}, {"step": 2, "valid_loss": 7.0}, {"step": 4, "valid_loss": 6.0}]
    recs += [{"step": 2, "valid_loss": 6.5}]  # a resumed run evaluated step 2 again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 6, "val')
    t, lo = valid_curve(tmp_path, 100)
    assert t.tolist() == [200.0, 400.0] and lo.tolist() == [6.5, 6.0]
    assert valid_curve(tmp_path / "none", 100)[0].size == 0


def test_spread_of_nothing_and_one():
    assert spread([])["n"] == 0 and spread([1.5]) == {"mean": 1.5, "std": 0.0, "n": 1}
    assert spread([1.0, float("nan"), 3.0])["n"] == 2
