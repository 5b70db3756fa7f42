"""The pipeline's final table: target loss per arm, and how well scores separate clean from
degraded documents (AUC), from the files a run wrote."""

from __future__ import annotations

import json
import os

import numpy as np

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.correlation import auc


def load_labels(path: str, n: int) -> np.ndarray:
    """Clean (True) / degraded (False) per corpus document from ``.npy`` or a jsonl ``label`` field."""
    if path.endswith(".npy"):
        labels = np.load(path).astype(bool)
    else:
        with open(path) as f:
            labels = np.array([json.loads(line).get("label") == "clean" for line in f if line.strip()])
    if len(labels) != n:
        raise LQSError(f"labels {path} hold {len(labels)} entries, the corpus {n} sequences")
    return labels


def evaluate_result(stdout: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise LQSError("lqs evaluate printed nothing")
    return json.loads(lines[-1])


def format_table(results: dict) -> str:
    """A plain-text table of ``results`` (as written to results.json)."""
    arms = results["arms"]
    base = arms.get("random", {}).get("target_loss")
    rows = [("arm", "selection", "order", "target loss", "vs random", "tokens seen")]
    for name, a in arms.items():
        delta = "" if base is None or name == "random" else f"{a['target_loss'] - base:+.4f}"
        rows.append(
            (name, a["selection"], a["order"], f"{a['target_loss']:.4f}", delta, str(a.get("train_tokens", "")))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    if results.get("auc"):
        out.append("")
        out.append("Clean vs degraded documents, AUC of the scores (1.0 = every clean document scores higher):")
        for name, v in results["auc"].items():
            out.append(f"  {name:<28} {v:.3f}")
    return "\n".join(out)


def collect(plan, runner, labels_path: str | None) -> dict:
    """Gather the per-arm losses and score AUCs of a finished run into a dict."""
    cfg = plan.cfg
    tokens = cfg.pretrain.steps * cfg.pretrain.global_batch_size * cfg.pretrain.max_length
    sel = cfg.selection
    how = {"top-r": f"top-r {sel.r}", "threshold": f"score >= {sel.threshold}", "top-k": f"top-k {sel.k}"}[sel.method]
    arms = {}
    for arm in plan.arms:
        res = evaluate_result(runner.stdout_of(f"evaluate-{arm}"))
        arms[arm] = {
            "selection": "random, same size" if arm == "random" else f"{arm.upper()} {how}",
            "order": "shuffle" if arm == "random" else sel.order,
            "target_loss": float(res["loss"]),
            "eval_examples": res.get("examples"),
            "train_tokens": tokens,
        }
    out = {"workdir": str(plan.w), "arms": arms, "auc": {}, "timings": runner.timings}
    if labels_path:
        n = len(np.load(plan.corpus_scores(plan.methods[0])))
        labels = load_labels(labels_path, n)
        proxy_idx = np.load(f"{plan.proxy}.indices.npy")
        for m in plan.methods:
            out["auc"][f"{m} scorer (whole corpus)"] = auc(np.load(plan.corpus_scores(m)), labels)
            out["auc"][f"{m} annotation (proxy set)"] = auc(
                np.load(os.path.join(plan.annotate_dir(m), "raw_scores.npy")), labels[proxy_idx]
            )
    return out
