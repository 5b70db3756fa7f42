"""Is the replayed trajectory healthy, and do the scores look like scores? (``annotate.json`` ``"health"``)

The scores are exact for the trajectory they replay, but a trajectory whose target loss
rises (a learning rate too large for the model and data) gives scores that can rank the
data backwards: every ``cos`` is measured against a costate that points the wrong way. The
verdict is computed from what the run already has:

- ``target_rise``: ``L_tgt(theta_i)`` above its start ``L_tgt(theta_0)`` by more than
  ``target_rise`` (relative) at some step ``i`` (the steps and the largest rise are named);
- ``target_not_falling``: ``L_tgt(theta_T) >= L_tgt(theta_0)``: no net progress on the target;
- ``train_diverging``: the mean train-batch loss of the last quarter of the replay above the
  first quarter's by more than ``train_rise`` (relative);
- ``non_finite``: a NaN or infinity in either loss curve or in the raw scores;
- ``cos_one_sign``: more than ``cos_one_sign`` of all ``cos`` values (examples x scoring steps)
  of one sign: the quality term no longer separates examples, only the norms do;
- ``scores_vs_length`` / ``scores_vs_own_loss``: the raw scores' Spearman rank correlation with
  the example's length (tokens) or with its own loss at ``theta_0`` above ``correlation`` in
  absolute value: the scores may be measuring the length or the loss, not usefulness;
- ``untrained_model``: the target loss at ``theta_0`` above ``untrained`` x ln(vocabulary size),
  the loss of a uniform guess: the annotation model has not learned (a random or barely trained
  model: its gradients say little about what the data teaches);
- ``lr_at_grid_top``: ``--lr auto`` chose the largest rate of its grid: the best rate may lie
  above it (extend ``--lr-grid``).

Each warning says whether it is about the ``replay`` (the first four: the trajectory itself is
unfit, its scores should not be used) or a sign in the scores (the others: worth a look,
not proof of a problem: a weak annotation model gives mostly positive ``cos``, and some
corpora do have their junk in their shortest documents). ``ok`` is false when a replay
warning fired; ``lqs annotate --strict`` fails on any warning; ``lqs pipeline`` stops before
the scorer when ``ok`` is false. The correlations are always reported, and so is
``target_loss.over_train``: the target loss at ``theta_0`` over the mean train-batch loss of the replay's
first quarter, which grows as the annotation model learns the corpus faster than the target (docs/quality.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.correlation import spearman_or_nan

logger = logging.getLogger(__name__)


REPLAY_KINDS = frozenset({"target_rise", "target_not_falling", "train_diverging", "non_finite", "lr_probe_failed"})
"""Warnings about the replayed trajectory itself (they make ``ok`` false)."""


@dataclass(frozen=True)
class Thresholds:
    target_rise: float = 0.01
    """Relative rise of the target loss above its start that is reported."""
    train_rise: float = 0.10
    """Relative rise of the last quarter's mean train loss above the first quarter's."""
    cos_one_sign: float = 0.95
    """Fraction of ``cos`` values of one sign that is reported."""
    correlation: float = 0.8
    """|Spearman| of the scores with length or own loss that is reported."""
    untrained: float = 0.9
    """Fraction of ln(vocabulary size) that the target loss at theta_0 may reach before the model is reported as
    not having learned."""


def step_ranges(steps: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, run = [], []
    for s in sorted(steps):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _target_checks(target: dict[int, float], th: Thresholds, warn) -> dict:
    steps = sorted(target)
    vals = np.array([target[i] for i in steps], dtype=np.float64)
    start, end = float(vals[0]), float(vals[-1])
    info = {"start": start, "end": end, "min": float(np.nanmin(vals)) if np.isfinite(vals).any() else None}
    if not np.all(np.isfinite(vals)):
        bad = [i for i, v in zip(steps, vals) if not np.isfinite(v)]
        warn("non_finite", f"the target loss is not finite at step(s) {step_ranges(bad)}", steps=bad)
        return info
    limit = start + th.target_rise * abs(start)
    above = [i for i, v in zip(steps, vals) if v > limit]
    k = int(np.argmax(vals))
    rise = float(vals[k] - start)
    info.update(max=float(vals[k]), max_step=steps[k], steps_above_start=above)
    if above:
        warn(
            "target_rise",
            f"the replay's target loss rose above its start {start:.4f} at step(s) {step_ranges(above)} "
            f"(largest {vals[k]:.4f} at step {steps[k]}, +{rise:.4f}, {100 * rise / abs(start):+.1f}%): "
            "the learning rate is too large for this model and data (try --lr auto or a smaller --lr)",
            steps=above,
            rise=rise,
        )
    if end >= start:
        warn(
            "target_not_falling",
            f"the replay's target loss did not fall over the trajectory ({start:.4f} at step {steps[0]}, "
            f"{end:.4f} at step {steps[-1]})",
        )
    return info


def _train_checks(train: dict[int, float], th: Thresholds, warn) -> dict:
    if not train:
        return {}
    steps = sorted(train)
    vals = np.array([train[i] for i in steps], dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        bad = [i for i, v in zip(steps, vals) if not np.isfinite(v)]
        warn("non_finite", f"the train-batch loss is not finite at step(s) {step_ranges(bad)}", steps=bad)
        return {}
    q = max(1, len(vals) // 4)
    first, last = float(vals[:q].mean()), float(vals[-q:].mean())
    info = {"first_quarter_mean": first, "last_quarter_mean": last}
    if len(vals) >= 2 and last > first + th.train_rise * abs(first):
        warn(
            "train_diverging",
            f"the replay's train loss rose: mean {first:.4f} over steps {steps[0]}-{steps[q - 1]}, "
            f"{last:.4f} over steps {steps[-q]}-{steps[-1]}",
        )
    return info


def replay_health(
    target_losses: dict[int, float],
    train_losses: dict[int, float],
    raw_scores: np.ndarray,
    lengths: np.ndarray,
    own_losses: np.ndarray | None,
    cos_stats: dict[int, dict[str, float]],
    thresholds: Thresholds = Thresholds(),
    vocab_size: int | None = None,
    probe: dict | None = None,
) -> dict:
    """The ``"health"`` record: ``ok``, ``warnings`` (``kind``, ``message``, details) and the figures behind them.
    ``vocab_size`` (the model's) enables ``untrained_model``, ``probe`` (the ``--lr auto`` record)
    ``lr_at_grid_top``."""
    th = thresholds
    warnings: list[dict] = []

    def warn(kind: str, message: str, **details) -> None:
        replay = kind in REPLAY_KINDS
        warnings.append({"kind": kind, "replay": replay, "message": message, **details})

    record: dict = {"target_loss": _target_checks(target_losses, th, warn)}
    start = record["target_loss"]["start"]
    if vocab_size is not None and vocab_size > 1 and np.isfinite(start):
        uniform = float(np.log(vocab_size))
        record["target_loss"]["uniform"] = uniform
        if start > th.untrained * uniform:
            warn(
                "untrained_model",
                f"the annotation model has not learned: its target loss at theta_0 is {start:.4f}, "
                f"{100 * start / uniform:.0f}% of ln({vocab_size}) = {uniform:.4f} (a uniform guess); "
                "annotate with a trained model (lqs pretrain, or --model of a trained checkpoint)",
                loss=start,
                uniform=uniform,
            )
    if probe is not None and probe.get("passed") and probe["chosen"] >= max(probe["grid"]):
        warn(
            "lr_at_grid_top",
            f"--lr auto chose the largest rate of its grid ({probe['chosen']:g}): a larger rate may be better; "
            "extend --lr-grid upwards",
            lr=probe["chosen"],
        )
    record["train_loss"] = _train_checks(train_losses, th, warn)
    first = record["train_loss"].get("first_quarter_mean")
    if first is not None and first > 0 and np.isfinite(start):
        # a figure, no warning: docs/quality.md measured it rising with the annotation model's training
        # (1.03 at 150 steps, 1.09 at 600 on its corpus) but two points place no threshold
        record["target_loss"]["over_train"] = start / first
    raw = np.asarray(raw_scores, dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        warn("non_finite", f"{int((~np.isfinite(raw)).sum())} raw score(s) are not finite")
    if cos_stats:
        pos = float(np.mean([v["positive"] for v in cos_stats.values()]))
        record["cos_positive_fraction"] = pos
        record["cos_mean"] = float(np.mean([v["mean"] for v in cos_stats.values()]))
        if max(pos, 1.0 - pos) > th.cos_one_sign:
            sign = "positive" if pos > 0.5 else "negative"
            warn(
                "cos_one_sign",
                f"{100 * max(pos, 1 - pos):.1f}% of the cos terms are {sign}: the quality term barely separates "
                "the examples (the ranking then follows the gradient norms)",
            )
    corr = {"length": spearman_or_nan(raw, lengths)}
    if own_losses is not None:
        corr["own_loss"] = spearman_or_nan(raw, own_losses)
    record["spearman"] = {k: (v if np.isfinite(v) else None) for k, v in corr.items()}
    for name, r in corr.items():
        if np.isfinite(r) and abs(r) > th.correlation:
            what = "length (tokens)" if name == "length" else "own loss at theta_0"
            warn(
                f"scores_vs_{name}",
                f"the scores follow the examples' {what}: Spearman {r:+.3f} (the scores may measure that, "
                "not usefulness for the target)",
                spearman=r,
            )
    ok = not any(w["replay"] for w in warnings)
    return {"ok": ok, "warnings": warnings, **record, "thresholds": asdict(th)}


def require_healthy(annotate_dir: str, what: str = "annotation", allow: bool = False) -> None:
    """Raise :class:`LQSError` listing the warnings when ``annotate_dir/annotate.json`` says ``"ok": false``
    (the pipeline's gate before the scorer); with ``allow`` only log them. A record without a verdict passes."""
    path = os.path.join(annotate_dir, "annotate.json")
    with open(path) as f:
        health = json.load(f).get("health") or {"ok": True}
    for w in health.get("warnings", []):
        if not w.get("replay", True):
            logger.warning("the %s in %s: %s", what, annotate_dir, w["message"])
    if not health.get("ok", True) and allow:
        logger.warning("the %s in %s is unhealthy; continuing (annotate.allow_unhealthy)", what, annotate_dir)
    elif not health.get("ok", True):
        lines = "\n".join(f"  - {w['message']}" for w in health.get("warnings", []) if w.get("replay", True))
        raise LQSError(
            f'the {what} in {annotate_dir} is unhealthy (annotate.json "health"):\n{lines}\n'
            "fix the annotation (e.g. annotate.lr: auto or a smaller annotate.lr), or set "
            "annotate.allow_unhealthy: true to train the scorer on these scores anyway"
        )
