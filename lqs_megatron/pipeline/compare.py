"""Arms compared over seeds: paired differences against the baseline, token efficiency, the curves' PNG.

An arm is pretrained once per seed; seed ``s`` of every arm shares the initial weights (``lqs pretrain
--seed s``), and the random baseline's seed ``s`` also has its own random selection and shuffle. From
the final target losses (``lqs evaluate``) and the validation curves of ``lqs pretrain --valid-data
TARGET --eval-max-length L`` (the same quantity, measured every ``--eval-interval`` steps, its last
point the final loss) :func:`compare_arms` gives, per arm:

- ``loss``: mean, sample std and count of the final loss over the arm's seeds;
- ``diff``: the paired difference ``arm(s) - baseline(s)`` over the seeds both have (mean, std, n);
- ``noise``: the yardstick of that difference: its std when there are two pairs or more, else
  ``sqrt(2)`` times the baseline's std over its seeds (two independent runs of the baseline differ by
  that much), else None; ``within_noise``: ``|diff| <= 2 * noise``;
- ``token_ratio``: per seed, the tokens the arm needed to first reach the baseline's final loss of the
  same seed, as a share of the baseline's tokens (linear between evaluation points; above 1 when the
  arm never got there: ``reached`` counts the seeds that did), mean and std over the seeds;
- ``area``: the mean over the run of ``arm curve - baseline curve`` (trapezoid over tokens, divided by
  the tokens: a mean loss gap; negative is better), mean and std over the seeds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lqs_megatron.utils.progress import METRICS_FILE, read_metrics

NOISE_STDS = 2.0
"""A difference within this many noise std of zero is reported as within the noise."""


def valid_curve(ckpt_dir: str | os.PathLike, tokens_per_step: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, loss)`` of the validation points in ``CKPT_DIR/metrics.jsonl`` (``lqs pretrain
    --valid-data``), by step; a step evaluated twice (a resumed run) keeps its last record."""
    path = Path(ckpt_dir) / METRICS_FILE
    points = {}
    if path.is_file():
        for rec in read_metrics(path):
            if rec.get("valid_loss") is not None and "step" in rec:
                points[int(rec["step"])] = float(rec["valid_loss"])
    steps = sorted(points)
    return np.array(steps, dtype=np.float64) * tokens_per_step, np.array([points[s] for s in steps])


def tokens_to_reach(tokens: np.ndarray, losses: np.ndarray, level: float) -> float:
    """The first token count at which the curve reaches ``level``, linear between its points (the first
    point when it is already there; NaN when it never gets there)."""
    below = np.flatnonzero(np.asarray(losses) <= level)
    if len(below) == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(tokens[0])
    t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
    return float(t0 + (t1 - t0) * (l0 - level) / (l0 - l1))


def mean_gap(tokens: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The area between curves ``a`` and ``b`` (same points) divided by the tokens it spans: the mean of
    ``a - b`` over the run (trapezoid); NaN with fewer than two points."""
    if len(tokens) < 2:
        return math.nan
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sum((d[1:] + d[:-1]) / 2 * np.diff(tokens)) / (tokens[-1] - tokens[0]))


def spread(values) -> dict:
    """``{"mean", "std", "n"}`` of the finite values (sample std, 0 for one value; NaN mean for none)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def compare_arms(final: dict, curves: dict | None = None, baseline: str = "random") -> dict:
    """Per arm, the statistics of the module docstring. ``final[arm][seed]`` is a final target loss,
    ``curves[arm][seed]`` a ``(tokens, loss)`` pair (optional)."""
    curves = curves or {}
    base = final.get(baseline, {})
    base_spread = spread(base.values())
    out = {}
    for arm, by_seed in final.items():
        rec = {"loss": spread(by_seed.values()), "seeds": sorted(by_seed)}
        if arm != baseline and base:
            pairs = [s for s in by_seed if s in base]
            rec["diff"] = spread([by_seed[s] - base[s] for s in pairs])
            if rec["diff"]["n"] >= 2:
                noise = rec["diff"]["std"]
            elif base_spread["n"] >= 2:
                noise = math.sqrt(2) * base_spread["std"]
            else:
                noise = None
            rec["noise"] = noise
            m = rec["diff"]["mean"]
            rec["within_noise"] = None if noise is None or not math.isfinite(m) else abs(m) <= NOISE_STDS * noise
        if arm in curves and baseline in curves:
            ratios, gaps, reached = [], [], 0
            for s, (t, lo) in curves[arm].items():
                if s not in curves[baseline] or len(t) == 0:
                    continue
                bt, bl = curves[baseline][s]
                if len(bt) == 0:
                    continue
                at = tokens_to_reach(t, lo, float(bl[-1]))
                reached += math.isfinite(at)
                # never reached: above 1, left out of the mean and counted in reached / seeds
                ratios.append(at / bt[-1] if math.isfinite(at) else math.inf)
                if len(t) == len(bt) and np.allclose(t, bt):
                    gaps.append(mean_gap(t, lo, bl))
            rec["token_ratio"] = spread([r for r in ratios if math.isfinite(r)])
            rec["token_ratio"]["reached"] = reached
            rec["token_ratio"]["seeds"] = len(ratios)
            rec["area"] = spread(gaps)
        out[arm] = rec
    return out


def format_pm(s: dict, digits: int = 4) -> str:
    """``mean +- std (n)``, or the mean alone for one value."""
    if not s or s["n"] == 0:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}"


def format_ratio(r: dict | None) -> str:
    """The token ratio as ``0.62 +- 0.05`` (with ``k/n reached`` when some seeds never got there)."""
    if not r or r["seeds"] == 0:
        return "-"
    if r["reached"] == 0:
        return "> 1 (not reached)"
    text = format_pm(r, 2)
    return text if r["reached"] == r["seeds"] else f"{text} ({r['reached']}/{r['seeds']} reached; others > 1)"


def plot_curves(curves: dict, png: str | os.PathLike, title: str = "", baseline: str = "random") -> Path | None:
    """One panel: each arm's mean validation curve over its seeds (the band: min..max over the seeds)
    against tokens, the baseline's final loss as a dotted line; matplotlib's Agg backend. None when no
    curve has points."""
    arms = {a: c for a, c in curves.items() if any(len(t) for t, _ in c.values())}
    if not arms:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from lqs_megatron.utils.atomic import atomic_file

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for arm, by_seed in arms.items():
        runs = [(t, lo) for t, lo in by_seed.values() if len(t)]
        n = min(len(t) for t, _ in runs)
        t = runs[0][0][:n]
        ys = np.stack([lo[:n] for _, lo in runs])
        style = {"color": "black", "lw": 2.0} if arm == baseline else {"lw": 1.3}
        (line,) = ax.plot(t, ys.mean(0), marker="o", ms=2.5, label=f"{arm} ({len(runs)})", **style)
        if len(runs) > 1:
            ax.fill_between(t, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.12)
        if arm == baseline:
            ax.axhline(ys[:, -1].mean(), color="black", ls=":", lw=1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("target loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lo = min(np.min(lo[-1:]) for c in arms.values() for _, lo in c.values() if len(lo))
    hi = max(np.max(lo[len(lo) // 4 :]) for c in arms.values() for _, lo in c.values() if len(lo))
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.set_title(title or "target loss along the run (mean over seeds; band: min..max)")
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(png)
