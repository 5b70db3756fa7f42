"""``lqs report``: where the scores of a dataset come from, and what the best and worst look like.

For a score file aligned with an indexed dataset (an annotation's ``raw_scores.npy`` /
``scores.npy`` over the proxy set, or ``lqs score``'s ``scores.npy`` over a corpus):

- score statistics overall and per group of a sidecar field (``--by source``: the
  ``PREFIX.meta.jsonl`` written by ``lqs tokenize --keep-fields``, ``data/datasets/meta.py``): count,
  mean, std, 10th / 50th / 90th percentiles, and the share of the group above the overall
  median (what a top-50% selection would keep of it);
- the top and bottom examples as text (decoded with ``--tokenizer`` or the tokenizer that
  ``PREFIX.stats.json`` records), with their group;
- the Spearman correlations of the scores with the sequence length and, when known, with
  each example's own loss (``--losses``, or an annotation's ``example_loss.npy`` beside the
  scores): the warning signs of ``lqs/health.py``;
- a PNG (matplotlib, Agg): per-group histograms, per-group box plots, score vs length.

:func:`write_report` writes ``OUT.txt``, ``OUT.json`` and ``OUT.png``;
:func:`report_if_sidecar` is the hook of ``prepare-scorer-data`` and ``score``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.meta import group_labels
from lqs_megatron.data.datasets.scores import check_scores, read_scores
from lqs_megatron.data.datasets.view import dataset_meta, open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file, save_json
from lqs_megatron.utils.correlation import spearman_or_nan

logger = logging.getLogger(__name__)

MAX_GROUPS_PLOTTED = 8
LOSS_FILE = "example_loss.npy"


def _summary(x: np.ndarray, median: float) -> dict:
    p10, p50, p90 = np.percentile(x, [10, 50, 90]) if len(x) else (np.nan,) * 3
    return {
        "count": int(len(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "p10": float(p10),
        "median": float(p50),
        "p90": float(p90),
        "above_median": float((x > median).mean()),
    }


def _tokenizer_dir(prefix: str, tokenizer: str | None) -> str | None:
    if tokenizer is not None:
        return tokenizer
    from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer

    try:
        info = dataset_tokenizer(prefix)
    except Exception as e:
        logger.warning("the tokenizer recorded for %s cannot be loaded (%s); no text in the report", prefix, e)
        return None
    return info["path"] if info else None


def _texts(ds: IndexedDataset, indices: list[int], tokenizer: str | None, chars: int) -> list[str | None]:
    if tokenizer is None:
        return [None] * len(indices)
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer, require_eos=False)
    seqs = []
    for i in indices:
        s = ds[i].tolist()
        if s and s[-1] == tok.eos_token_id:
            s = s[:-1]
        seqs.append(s)
    texts = tok.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    out = []
    for t in texts:
        t = " ".join(t.split())
        out.append(t if len(t) <= chars else t[: chars - 3] + "...")
    return out


def _own_losses(scores_path: str | None, losses: str | None, n: int) -> np.ndarray | None:
    if losses is None and scores_path is not None:
        cand = Path(scores_path).with_name(LOSS_FILE)
        losses = str(cand) if cand.is_file() else None
        if losses is not None and len(np.load(losses, mmap_mode="r")) != n:
            return None  # another set's losses: not ours
    if losses is None:
        return None
    return check_scores(read_scores(losses), n, name=losses)


def build_report(
    scores: str | np.ndarray,
    data: str,
    by: str | None = None,
    tokenizer: str | None = None,
    losses: str | None = None,
    top: int = 5,
    chars: int = 300,
) -> tuple[dict, dict]:
    """``(report, arrays)``: the report record (JSON-ready) and the arrays the plot needs."""
    scores_path = scores if isinstance(scores, (str, os.PathLike)) else None
    ds = open_dataset(data)
    n = len(ds)
    x = check_scores(read_scores(scores) if scores_path else np.asarray(scores), n, name=str(scores_path or "scores"))
    if n == 0:
        raise LQSError(f"{data} is empty: nothing to report")
    if not np.all(np.isfinite(x)):
        raise LQSError(f"{scores_path or 'scores'}: {int((~np.isfinite(x)).sum())} scores are not finite")
    lengths = ds.sequence_lengths.astype(np.int64)
    groups = group_labels(data, n, by)
    median = float(np.median(x))
    rep: dict = {"scores": str(scores_path) if scores_path else None, "data": str(data), "by": by, "num": n}
    rep["overall"] = _summary(x, median)
    if groups is not None:
        g = np.asarray(groups, dtype=object)
        names = sorted(set(groups), key=lambda k: -float(x[g == k].mean()))
        rep["groups"] = {k: _summary(x[g == k], median) for k in names}
    own = _own_losses(scores_path, losses, n)
    corr = {"length": spearman_or_nan(x, lengths)}
    if own is not None:
        corr["own_loss"] = spearman_or_nan(x, own)
    rep["spearman"] = {k: (v if np.isfinite(v) else None) for k, v in corr.items()}
    order = np.argsort(-x, kind="stable")
    k = min(top, n)
    tok = _tokenizer_dir(data, tokenizer)
    rep["tokenizer"] = tok
    for name, idx in (("top", order[:k].tolist()), ("bottom", order[::-1][:k].tolist())):
        texts = _texts(ds, idx, tok, chars)
        rep[name] = [
            {
                "index": i,
                "score": float(x[i]),
                "tokens": int(lengths[i]),
                **({"group": groups[i]} if groups else {}),
                "text": t,
            }
            for i, t in zip(idx, texts)
        ]
    return rep, {"scores": x, "lengths": lengths, "groups": groups}


def format_report(rep: dict) -> str:
    """The report as plain text (what ``lqs report`` prints)."""
    head = ("group", "count", "mean", "std", "p10", "median", "p90", "> median")
    rows = [head]

    def row(name, s):
        return (
            name,
            str(s["count"]),
            *(f"{s[k]:+.4f}" for k in ("mean", "std", "p10", "median", "p90")),
            f"{100 * s['above_median']:.0f}%",
        )

    rows.append(row("(all)", rep["overall"]))
    for name, s in (rep.get("groups") or {}).items():
        rows.append(row(name[:40], s))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"scores {rep['scores'] or ''} over {rep['data']} ({rep['num']} sequences)"]
    if rep.get("by"):
        lines[0] += f", by {rep['by']} (sorted by mean score)"
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    sp = rep["spearman"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    corr = f"Spearman of the scores with: length {fmt(sp['length'])}"
    if "own_loss" in sp:
        corr += f", own loss {fmt(sp['own_loss'])}"
    lines += ["", corr]
    for name in ("top", "bottom"):
        lines += ["", f"{name} {len(rep[name])}:"]
        for e in rep[name]:
            where = f" [{e['group']}]" if "group" in e else ""
            text = e["text"] if e["text"] is not None else "(no tokenizer known: pass --tokenizer to see the text)"
            lines.append(f"  #{e['index']} score {e['score']:+.4f}, {e['tokens']} tokens{where}: {text}")
    return "\n".join(lines)


def plot_report(rep: dict, arrays: dict, path: str | os.PathLike) -> None:
    """PNG: score histograms per group, box plots per group, and score vs length."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    x, lengths, groups = arrays["scores"], arrays["lengths"], arrays["groups"]
    if groups is None:
        parts = {"all": x}
    else:
        g = np.asarray(groups, dtype=object)
        names = sorted(rep["groups"], key=lambda k: -rep["groups"][k]["count"])
        parts = {k: x[g == k] for k in names[:MAX_GROUPS_PLOTTED]}
        rest = names[MAX_GROUPS_PLOTTED:]
        if rest:
            parts["(other)"] = x[np.isin(g, rest)]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    bins = np.histogram_bin_edges(x, bins=min(60, max(10, len(x) // 20)))
    for name, v in parts.items():
        a.hist(v, bins=bins, histtype="step", density=True, lw=1.4, label=f"{name} ({len(v)})")
    a.set_xlabel("score")
    a.set_ylabel("density")
    a.legend(fontsize=7)
    a.set_title("distribution")
    b.boxplot(list(parts.values()), vert=False, showfliers=False)
    b.set_yticks(range(1, len(parts) + 1), [k[:20] for k in parts], fontsize=7)
    b.set_xlabel("score")
    b.set_title("per group")
    c.scatter(lengths, x, s=3, alpha=0.4)
    c.set_xscale("log")
    c.set_xlabel("tokens")
    c.set_ylabel("score")
    r = rep["spearman"]["length"]
    c.set_title(f"score vs length (Spearman {r:+.3f})" if r is not None else "score vs length")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(str(rep['scores'] or 'scores')).name} over {Path(rep['data']).name}")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_report(out: str | os.PathLike, scores, data: str, **kw) -> dict:
    """Build the report and write ``OUT.txt``, ``OUT.json`` and ``OUT.png``; return the record."""
    rep, arrays = build_report(scores, data, **kw)
    out = str(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    text = format_report(rep)
    with atomic_file(f"{out}.txt") as tmp:
        Path(tmp).write_text(text + "\n")
    save_json(f"{out}.json", rep)
    plot_report(rep, arrays, f"{out}.png")
    rep["files"] = [f"{out}.txt", f"{out}.json", f"{out}.png"]
    return rep


def report_if_sidecar(out: str | os.PathLike, scores, data: str, tokenizer: str | None = None) -> dict | None:
    """The hook of ``prepare-scorer-data`` and ``score``: write the report when ``data`` has a sidecar
    (grouped by ``source`` when the sidecar has that field, else by its first field); never fails the caller."""
    try:
        records = dataset_meta(data)
        if records is None:
            return None
        first = next(records, {})
        by = "source" if "source" in first else next(iter(first), None)
        rep = write_report(out, scores, data, by=by, tokenizer=tokenizer)
    except (LQSError, OSError, ValueError) as e:
        logger.warning("no score report for %s: %s", data, e)
        return None
    logger.info("score report by %s: %s", by, ", ".join(rep["files"]))
    return rep
