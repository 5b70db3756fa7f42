"""The pipeline's closing summary, from the files a run wrote: the table (target loss per arm over its
seeds, its difference from the random baseline seed by seed and whether that is within the noise, the
tokens it needed to reach the baseline's final target loss: :mod:`lqs_megatron.pipeline.compare`; how
well scores separate clean from degraded documents, AUC), then per method the annotation's health
verdict and learning rate, the share of each source's documents that each arm kept (when the corpus
was tokenized with a ``source`` field, ``data.keep_fields``), and where the selections, the score
reports and the arms' Hugging Face exports are."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from lqs_megatron.data.datasets.meta import read_meta
from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.compare import NOISE_STDS, compare_arms, format_pm, format_ratio, plot_curves, valid_curve
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


KEPT_ROWS = 12
"""Groups of the kept-share lines printed (the largest; results.json holds all)."""


def format_table(results: dict) -> str:
    """A plain-text table of ``results`` (as written to results.json)."""
    arms = results["arms"]
    rows = [
        ("arm", "selection", "order", "seeds", "target loss", "vs random", "tokens to random's loss", "tokens seen")
    ]
    for name, a in arms.items():
        cmp = a.get("comparison", {})
        loss = format_pm(cmp["loss"]) if cmp.get("loss") else f"{a['target_loss']:.4f}"
        delta = ""
        if cmp.get("diff") and cmp["diff"]["n"]:
            d = cmp["diff"]
            delta = f"{d['mean']:+.4f}" + (f" +- {d['std']:.4f}" if d["n"] > 1 else "")
            delta += " (within noise)" if cmp.get("within_noise") else ""
        ratio = format_ratio(cmp.get("token_ratio")) if name != "random" else ""
        seeds = ",".join(str(s) for s in a.get("seeds", {}))
        rows.append(
            (
                name,
                a["selection"],
                a["order"],
                seeds,
                loss,
                delta,
                "" if ratio == "-" else ratio,
                str(a["train_tokens"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    if "random" in arms and len(arms) > 1:
        out += [
            "",
            "target loss: mean +- std over the seeds; vs random: the difference from random's run of the same seed "
            f"(mean +- std over seeds), within noise when within {NOISE_STDS:g} x its std (one seed: x sqrt(2) x "
            "random's std over its seeds); tokens to random's loss: the share of random's tokens after which the arm's "
            "target loss first reached random's final one (same seed, linear between the evaluations).",
        ]
    if results.get("auc"):
        out.append("")
        out.append("Clean vs degraded documents, AUC of the scores (1.0 = every clean document scores higher):")
        for name, v in results["auc"].items():
            out.append(f"  {name:<28} {v:.3f}")
    if results.get("methods"):
        out += ["", *format_summary(results)]
    return "\n".join(out)


def format_summary(results: dict) -> list[str]:
    """The lines after the table: health and lr per method, kept share per source, where the outputs are."""
    out = ["Annotation, per method (docs/annotation.md, 'Health of the replay'):"]
    width = max(len(m) for m in results["methods"])
    for m, a in results["methods"].items():
        verdict = "ok" if a["health_ok"] else "WARNING: " + "; ".join(a["warnings"])
        lr = f"{a['lr']:g}" + (" (chosen by --lr auto)" if a["lr_auto"] else "")
        out.append(f"  {m:<{width}}  health {verdict}; learning rate {lr}; {a['annotate_json']}")
    kept = results.get("kept_share")
    if kept:
        arms = list(kept["arms"])
        out += ["", f"Kept share by {kept['field']} (selected / documents of the {kept['field']}):"]
        names = list(kept["documents"])[:KEPT_ROWS]
        w = max(len(kept["field"]), *(len(n) for n in names))
        out.append(f"  {kept['field']:<{w}}  {'documents':>9}  " + "  ".join(f"{a:>7}" for a in arms))
        for name in names:
            shares = "  ".join(f"{kept['arms'][a][name]:>7.1%}" for a in arms)
            out.append(f"  {name:<{w}}  {kept['documents'][name]:>9}  {shares}")
        if len(kept["documents"]) > KEPT_ROWS:
            out.append(f"  ({len(kept['documents']) - KEPT_ROWS} smaller groups in results.json)")
    out += ["", "Where to look:"]
    paths = results["paths"]
    for arm, p in paths["arms"].items():
        out.append(f"  {arm}: selection {p['selection']}, trained on {p['train_data']}")
        out.append(f"  {' ' * len(arm)}  model (Hugging Face) {p['hf']}")
        for r in p.get("reports", []):
            out.append(f"  {' ' * len(arm)}  report {r}")
    if paths.get("curves"):
        out.append(f"  target-loss curves {paths['curves']}")
    out.append(f"  results {paths['results']}, logs {paths['logs']}")
    return out


def _annotation_summary(plan) -> dict:
    """Per method: the health verdict and the learning rate of its ``annotate.json``."""
    methods = {}
    for m in plan.methods:
        path = plan.annotate_dir(m) / "annotate.json"
        rec = json.loads(path.read_text())
        health = rec.get("health", {})
        methods[m] = {
            "health_ok": bool(health.get("ok", True)),
            "warnings": [w.get("kind", "?") for w in health.get("warnings", [])],
            "lr": float(rec["arguments"]["lr"]),
            "lr_auto": "lr_probe" in rec,
            "annotate_json": str(path),
        }
    return methods


def _kept_share(plan) -> dict | None:
    """Per arm, the share of each group's corpus documents that its selection kept, grouped by ``source``
    when the corpus sidecar (``data.keep_fields``) has it, else by its first field (as the score reports);
    None without a sidecar."""
    n = len(np.load(plan.corpus_scores(plan.methods[0])))
    rows = read_meta(str(plan.corpus), expected=n)
    fields = [f for f in plan.cfg.data.keep_fields or [] if any(f in r for r in rows or [])]
    if not fields:
        return None
    field = "source" if "source" in fields else fields[0]
    groups = ["(none)" if r.get(field) is None else str(r[field]) for r in rows]
    totals = Counter(groups)
    names = sorted(totals, key=lambda g: (-totals[g], g))
    arms = {}
    for arm in plan.arms:
        kept = Counter(groups[i] for i in np.load(f"{plan.selected(arm)}.indices.npy"))
        arms[arm] = {g: kept[g] / totals[g] for g in names}
    return {"field": field, "documents": {g: totals[g] for g in names}, "arms": arms}


def _paths(plan) -> dict:
    arms = {}
    for arm in plan.arms:
        reports = []
        if arm in plan.methods:  # the score reports (lqs/report.py), written when the corpus has a sidecar
            for out in (plan.corpus_scores(arm).parent / "report", plan.w / "scorer" / arm / "data" / "report"):
                reports += [f"{out}.{ext}" for ext in ("txt", "png") if Path(f"{out}.{ext}").is_file()]
        arms[arm] = {
            "selection": str(plan.selected(arm)),
            "train_data": str(plan.train_data(arm)),
            "hf": str(plan.final_hf(arm)),
            "reports": reports,
        }
    return {"arms": arms, "results": str(plan.w / "results.json"), "logs": str(plan.w / "logs")}


def collect(plan, runner, labels_path: str | None) -> dict:
    """Gather the per-arm losses (every seed), their comparison with the baseline and the score AUCs of a
    finished run into a dict; draw the arms' target-loss curves into ``WORKDIR/curves.png``."""
    cfg = plan.cfg
    per_step = cfg.pretrain.global_batch_size * cfg.pretrain.max_length
    tokens = cfg.pretrain.steps * per_step
    sel = cfg.selection
    how = {"top-r": f"top-r {sel.r}", "threshold": f"score >= {sel.threshold}", "top-k": f"top-k {sel.k}"}[sel.method]
    arms, final, curves = {}, {}, {}
    for arm in plan.arms:
        examples = None
        for seed, run in plan.runs[arm]:
            res = evaluate_result(runner.stdout_of(f"evaluate-{run}"))
            final.setdefault(arm, {})[seed] = float(res["loss"])
            curves.setdefault(arm, {})[seed] = valid_curve(plan.final_ckpt(run), per_step)
            examples = res.get("examples")
        arms[arm] = {
            "selection": "random, same size" if arm == "random" else f"{arm.upper()} {how}",
            "order": "shuffle" if arm == "random" else sel.order,
            "target_loss": float(np.mean(list(final[arm].values()))),
            "seeds": {str(s): v for s, v in final[arm].items()},
            "eval_examples": examples,
            "train_tokens": tokens,
        }
    for arm, rec in compare_arms(final, curves, "random").items():
        arms[arm]["comparison"] = rec
    png = plan.w / "curves.png"
    drawn = plot_curves(curves, png, f"target loss along the run ({', '.join(plan.arms)})") if curves else None
    out = {"workdir": str(plan.w), "arms": arms, "auc": {}, "timings": runner.timings}
    out["methods"] = _annotation_summary(plan)
    out["kept_share"] = _kept_share(plan)
    out["paths"] = _paths(plan)
    out["paths"]["curves"] = str(drawn) if drawn else None
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
