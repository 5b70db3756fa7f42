"""Real-text quality benchmark: does LQS select text that helps the target, on text nobody wrote for it?

The corpus (``benchmarks/quality_corpus.py``) comes from Debian documentation packages
installed at benchmark time (``apt-get install perl-doc postgresql-doc linux-doc``): clean
technical prose, lower-value real text, degraded copies, and perlfaq as the LIMA-like target
(half for the annotation, half held out). The whole chain runs as a user would run it, one
public ``lqs`` command per step (``lqs_megatron.pipeline.runner``: logs in ``WORK/logs``,
finished steps reused on a rerun): train-tokenizer, tokenize (``--keep-fields source,kind``),
tokenize-target, pretrain + export-hf the annotation model, sample-proxy, annotate (LQS and
PDS), prepare-scorer-data, train-scorer, score, select top-50%, order, pretrain every arm from
scratch at equal tokens, once per seed (``--seeds``: seed k of every arm is ``pretrain --seed k``;
RANDOM's pick and the shuffles use k too), with the held-out target's loss every ``--eval-interval``
steps (``pretrain --eval-max-length``: ``lqs evaluate``'s number, checked by ``lqs evaluate`` of each
arm's first seed). Arms: FULL (the whole corpus, ``order --method shuffle``, the arms' path),
FULL-PRETRAIN-SHUFFLE (the corpus as stored, ``pretrain --shuffle``: the path of before), RANDOM (a
random half, shuffled), PDS+folding, LQS+shuffle, LQS+folding, and the DELT follow-up's orderings of
the same LQS half: LQS+stair, LQS+saw and LQS+folding+jitter (``--jitter`` positions per window); online
selection from FULL's stream (``pretrain --online-select dot --target`` the annotation's target set,
``--online-c`` candidates per kept sample, 0: none, as in ``--tiny``): ONLINE-DOT at every arm's steps and
ONLINE-DOT-FLOPS at a plain arm's training FLOPs (fewer steps, ``online_flops``); and
the annotation-model study (``--study``): LQS+shuffle and LQS+folding from annotation models of other
training lengths. Prints the tables of docs/quality.md (mean +- std over seeds, the paired difference
against RANDOM, the tokens each arm needs to reach RANDOM's final loss, the mean gap between the
curves), draws ``WORK/curves.png`` and writes ``WORK/results.json``.

    python benchmarks/bench_quality.py --work /tmp/quality            # the full run
    python benchmarks/bench_quality.py --tiny                           # smoke test of the chain
    # arms in two processes on one work directory, then the table:
    python benchmarks/bench_quality.py --work W --arms full,full-pretrain-shuffle,random &
    python benchmarks/bench_quality.py --work W --arms pds-folding,lqs-folding,...
    python benchmarks/bench_quality.py --work W --collect-only
    # a sweep point:
    python benchmarks/bench_quality.py --work W --annotation-only --methods lqs --lr 0.05 --am-steps 1200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_corpus import PACKAGES, build_corpus, sources

from lqs_megatron.data.datasets.meta import read_meta
from lqs_megatron.pipeline.compare import compare_arms, format_pm, format_ratio, plot_curves, valid_curve
from lqs_megatron.pipeline.runner import Runner, Step
from lqs_megatron.utils.correlation import auc

FULL = dict(
    vocab=4096,
    doc_len=257,
    am_steps=600,
    am_lr=3e-3,
    proxy=1000,
    T=20,
    K=5,
    lr="auto",
    B=16,
    L=128,
    scorer_epochs=5,
    scorer_bs=16,
    scorer_lr=5e-4,
    steps=300,
    plr=3e-3,
    gbs=16,
    seq=128,
    target_num=0,
    jitter=256,
    eval_interval=50,
    study=(150,),
    online_c=2,
    online_refresh=10,
)
TINY = dict(FULL, vocab=2048, doc_len=65, am_steps=20, proxy=64, T=4, K=2, L=32, scorer_epochs=1, steps=20, seq=32)
TINY.update(jitter=32, eval_interval=5, study=(), online_c=0)
EVAL_LENGTH = 1024
"""``lqs evaluate --max-length`` of the held-out target, and ``--eval-max-length`` of the arms' curves."""
STUDY_ARMS = ("lqs-shuffle", "lqs-folding")
"""The arms each other annotation model of the study (``--study``) is measured with."""
ONLINE_ARMS = ("online-dot", "online-dot-flops")
"""Online selection (``pretrain --online-select dot``) from FULL's stream: at the arms' optimizer steps, and at
their training FLOPs (fewer steps, :func:`online_flops`)."""


def order_arms(c: dict) -> dict[str, tuple[str, list[str]]]:
    """The scored arms: name -> (the scores' method, the ``lqs order`` flags of its top half)."""
    folding = ["--method", "folding", "--layers", "3"]
    return {
        "pds-folding": ("pds", folding),
        "lqs-shuffle": ("lqs", ["--method", "shuffle", "--seed", "{seed}"]),  # {seed}: one order per seed
        "lqs-folding": ("lqs", folding),
        "lqs-stair": ("lqs", ["--method", "stair"]),  # the follow-up's configs: 3 layers, 2 sections, 0.225
        "lqs-saw": ("lqs", ["--method", "saw"]),  # 2 layers, 3 sections, 0.075
        "lqs-folding-jitter": ("lqs", [*folding, "--jitter", str(c["jitter"]), "--seed", "{seed}"]),
    }


def online_flops(c: dict) -> dict:
    """The training FLOPs of an online step in plain steps, and the steps of ``online-dot-flops``.

    Counted in multiply-adds x 2 of the weight matrices per token (attention's ``T^2`` products, norms, the
    embedding lookup and AdamW left out). A plain step on ``B`` samples of ``T`` tokens costs ``6 B T W``
    (forward 2, activation gradients 2, weight gradients 2; ``W`` the weights of the linear layers and the LM
    head). An online step (docs/online_selection.md): the candidate pass over ``C B`` samples, ``6 C B T W``
    (forward 2, activation gradients 2, the score ``<g_i, G>`` of every layer 2, a weight-gradient-sized product);
    the update over the ``B`` kept samples, ``2 B T W_body + 4 B T W_head`` (the head's gradient is rebuilt: a
    logits GEMM and a gradient GEMM); the target gradient, ``6 b (T + 1) W`` every ``M`` steps (``b = B``, the
    target batch cut to ``L + 1 = T + 1`` tokens, padding counted). The ratio is
    ``C + (2 + 2 h) / 6 + (T + 1) / (T M)`` with ``h = W_head / W``; ``online-dot-flops`` trains
    ``floor(steps / ratio)`` steps, so its FLOPs are at most a plain arm's."""
    from lqs_megatron.models.config import load_model_config

    m = load_model_config("tiny")
    d, kv = m.hidden_size, m.num_kv_heads * m.head_dim
    body = m.num_layers * (2 * d * m.num_heads * m.head_dim + 2 * d * kv + 3 * d * m.intermediate_size)
    head = -(-c["vocab"] // 128) * 128 * d  # the padded vocabulary (make_vocab_size_divisible_by 128)
    h = head / (body + head)
    ratio = c["online_c"] + (2 + 2 * h) / 6 + (c["seq"] + 1) / (c["seq"] * c["online_refresh"])
    return {"ratio": ratio, "head_share": h, "steps": int(c["steps"] // ratio)}


def arm_steps_count(c: dict, arm: str) -> int:
    """The optimizer steps of ``arm``: every arm's ``steps``, except the equal-FLOPs online arm."""
    return online_flops(c)["steps"] if arm == "online-dot-flops" else c["steps"]


def _ds(prefix: Path) -> list[str]:
    return [f"{prefix}.bin", f"{prefix}.idx"]


def install_packages() -> None:
    if all(paths for paths, _ in sources().values()) or not os.access("/usr/bin/apt-get", os.X_OK):
        return
    print(f"installing {' '.join(PACKAGES)} (documentation only) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL)


def layout(w: Path, c: dict) -> dict:
    """Step names and paths that depend on the settings, so one work directory holds a whole sweep."""
    am = f"am{c['am_steps']}-lr{c['am_lr']:g}"
    tn = f"tn{c['target_num'] or 'all'}"
    an = f"{am}-{tn}-T{c['T']}-K{c['K']}-B{c['B']}-L{c['L']}-lr{c['lr']}"
    return {
        "am": am,
        "tn": tn,
        "an": an,
        "am_ckpt": w / "annotation_model" / am / "ckpt",
        "am_hf": w / "annotation_model" / am / "hf",
        "target": w / "data" / f"target-{tn}",
        "annotate": {m: w / "annotate" / f"{m}-{an}" for m in ("lqs", "pds")},
    }


def plan(w: Path, c: dict, seeds: list[int], annotation_only: bool) -> list[Step]:
    corpus, tok, data = w / "corpus", w / "tokenizer", w / "data"
    lay = layout(w, c)
    target = str(lay["target"])
    target_in = f"{corpus}/target.jsonl"
    if c["target_num"]:
        target_in = f"{corpus}/target-{lay['tn']}.jsonl"
        lines = (corpus / "target.jsonl").read_text().splitlines(keepends=True)[: c["target_num"]]
        Path(target_in).write_text("".join(lines))
    s = [
        Step(
            "train-tokenizer",
            [
                "train-tokenizer",
                "--input",
                f"{corpus}/corpus.jsonl",
                "--vocab-size",
                str(c["vocab"]),
                "--out",
                str(tok),
            ],
            outputs=[str(tok)],
        ),
        Step(
            "tokenize",
            [
                "tokenize",
                "--input",
                f"{corpus}/corpus.jsonl",
                "--tokenizer",
                str(tok),
                "--out",
                str(data / "corpus"),
                "--max-length",
                str(c["doc_len"]),
                "--keep-fields",
                "source,kind",
                "--workers",
                "2",
            ],
            outputs=_ds(data / "corpus"),
            after=["train-tokenizer"],
        ),
        Step(
            f"tokenize-target-{lay['tn']}",
            ["tokenize-target", "--input", target_in, "--tokenizer", str(tok), "--out", target],
            outputs=_ds(Path(target)),
            after=["train-tokenizer"],
        ),
        Step(
            "tokenize-holdout",
            [
                "tokenize-target",
                "--input",
                f"{corpus}/holdout.jsonl",
                "--tokenizer",
                str(tok),
                "--out",
                str(data / "holdout"),
            ],
            outputs=_ds(data / "holdout"),
            after=["train-tokenizer"],
        ),
        Step(
            "sample-proxy",
            [
                "sample-proxy",
                "--data",
                str(data / "corpus"),
                "--num",
                str(c["proxy"]),
                "--seed",
                "1",
                "--out",
                str(data / "proxy"),
            ],
            outputs=_ds(data / "proxy"),
            after=["tokenize"],
        ),
    ]
    s += annotation_steps(w, c, c["methods"])
    if annotation_only:
        return s
    for m in ("lqs", "pds"):
        s += scorer_steps(w, c, m, "")
    s += arm_steps(w, c, seeds, study=False)
    for n in c["study"]:  # the annotation-model study: LQS only, STUDY_ARMS
        cn = dict(c, am_steps=n)
        s += annotation_steps(w, cn, ["lqs"]) + scorer_steps(w, cn, "lqs", f"-am{n}")
    s += arm_steps(w, c, seeds, study=True)
    return s


def annotation_steps(w: Path, c: dict, methods: list[str]) -> list[Step]:
    """The annotation model of ``c["am_steps"]`` steps (pretrain, export-hf) and its annotation by each method."""
    tok, data, proxy = w / "tokenizer", w / "data", w / "data" / "proxy"
    lay = layout(w, c)
    am_ckpt, am_hf, am, target = lay["am_ckpt"], lay["am_hf"], lay["am"], str(lay["target"])
    s = [
        Step(
            f"pretrain-annotation-model-{am}",
            _pretrain(tok, data / "corpus", am_ckpt, c["am_steps"], c["am_lr"], c, 1),
            outputs=[str(am_ckpt)],
            after=["tokenize"],
            resume_flag="--resume",
        ),
        Step(
            f"export-annotation-model-{am}",
            ["export-hf", "--checkpoint", str(am_ckpt), "--out", str(am_hf)],
            outputs=[str(am_hf)],
            after=[f"pretrain-annotation-model-{am}"],
        ),
    ]
    for m in methods:
        out = lay["annotate"][m]
        s.append(
            Step(
                f"annotate-{m}-{lay['an']}",
                [
                    "annotate",
                    "--model",
                    str(am_hf),
                    "--train",
                    str(proxy),
                    "--target",
                    target,
                    "--proxy",
                    str(proxy),
                    "--steps",
                    str(c["T"]),
                    "--interval",
                    str(c["K"]),
                    "--lr",
                    str(c["lr"]),
                    "--global-batch-size",
                    str(c["B"]),
                    "--max-length",
                    str(c["L"]),
                    "--method",
                    m,
                    "--out",
                    str(out),
                ],
                outputs=[str(out / "raw_scores.npy")],
                after=[f"tokenize-target-{lay['tn']}", "sample-proxy", f"export-annotation-model-{am}"],
                resume_flag="--resume",
                state=[str(out)],
            )
        )
    return s


def scorer_steps(w: Path, c: dict, m: str, tag: str) -> list[Step]:
    """prepare-scorer-data, train-scorer, score and select top-50% of method ``m``'s annotation (``tag``: ""
    for the benchmark's annotation model, ``-amN`` for the study's others)."""
    lay = layout(w, c)
    sd, ck, sc = w / "scorer" / f"{m}{tag}" / "data", w / "scorer" / f"{m}{tag}" / "ckpt", w / "scores" / f"{m}{tag}"
    sel = w / "curated" / f"{m}{tag}" / "selected"
    return [
        Step(
            f"prepare-scorer-data-{m}{tag}",
            ["prepare-scorer-data", "--proxy", str(w / "data" / "proxy")]
            + ["--scores", str(lay["annotate"][m] / "scores.npy"), "--out", str(sd)],
            outputs=[str(sd)],
            after=[f"annotate-{m}-{lay['an']}"],
        ),
        Step(
            f"train-scorer-{m}{tag}",
            ["train-scorer", "--base", str(lay["am_hf"]), "--data", str(sd), "--out", str(ck)]
            + ["--epochs", str(c["scorer_epochs"]), "--lr", str(c["scorer_lr"])]
            + ["--global-batch-size", str(c["scorer_bs"]), "--warmup-steps", "20"],
            outputs=[str(ck)],
            after=[f"prepare-scorer-data-{m}{tag}"],
            resume_flag="--resume",
        ),
        Step(
            f"score-{m}{tag}",
            ["score", "--scorer", str(ck), "--data", str(w / "data" / "corpus"), "--out", str(sc), "--no-progress"],
            outputs=[str(sc / "scores.npy")],
            after=[f"train-scorer-{m}{tag}"],
        ),
        Step(
            f"select-{m}{tag}",
            ["select", "--data", str(w / "data" / "corpus"), "--scores", str(sc / "scores.npy")]
            + ["--method", "top-r", "--r", "0.5", "--out", str(sel)],
            outputs=_ds(sel),
            after=[f"score-{m}{tag}"],
        ),
    ]


def arm_list(c: dict) -> list[str]:
    """Every arm of the table, in its order: FULL (both paths), RANDOM, the scored arms, the online arms (with
    ``online_c``), the study's."""
    study = [f"{a}-am{n}" for n in c["study"] for a in STUDY_ARMS]
    online = list(ONLINE_ARMS) if c["online_c"] else []
    return ["full", "full-pretrain-shuffle", "random", *order_arms(c), *online, *study]


def arm_steps(w: Path, c: dict, seeds: list[int], study: bool) -> list[Step]:
    """The arms' training data and, per seed (seed-major, so a run cut short holds whole seeds), each arm's
    pretrain and evaluate: the benchmark's arms, or (``study``) those of the annotation-model study. Seed
    ``k`` of every arm: ``lqs pretrain --seed k`` (the initial weights); the shuffles of RANDOM, FULL,
    LQS+shuffle and the jitter also use ``k``, and RANDOM picks its half with ``k``."""
    data, s = w / "data", []
    if study:
        arms = {f"{a}-am{n}": (f"lqs-am{n}", order_arms(c)[a][1]) for n in c["study"] for a in STUDY_ARMS}
    else:
        arms = order_arms(c)
    online = list(ONLINE_ARMS) if c["online_c"] and not study else []
    names = [*arms] if study else ["full", "full-pretrain-shuffle", "random", *arms, *online]
    wanted = [a for a in names if not c.get("arms") or a in c["arms"]]
    src: dict[tuple[str, int], tuple[Path, str]] = {}  # (arm, seed) -> (its training data, the step that made it)
    for arm, (m, how) in arms.items():
        sel = w / "curated" / m / "selected"
        for seed in seeds if any("{seed}" in f for f in how) else [None]:
            name = arm if seed is None else f"{arm}-{seed}"
            ordered = w / "curated" / name / "ordered"
            flags = [f.format(seed=seed) for f in how]
            argv = ["order", "--data", str(sel), "--scores", f"{sel}.scores.npy", *flags, "--out", str(ordered)]
            s.append(Step(f"order-{name}", argv, outputs=_ds(ordered), after=[f"select-{m}"]))
            for k in seeds if seed is None else [seed]:
                src[arm, k] = ordered, f"order-{name}"
    if not study:
        zeros = w / "curated" / "full" / "zeros.npy"
        s.append(
            Step(
                "zeros-full",
                outputs=[str(zeros)],
                after=["tokenize"],
                func_id="zeros",
                func=lambda: _zeros(zeros, data),
            )
        )
    for seed in seeds if not study else []:
        pick, sel, ordered = (w / "curated" / f"random-{seed}" / x for x in ("pick.npy", "selected", "ordered"))
        shuffle = ["--method", "shuffle", "--seed", str(seed)]
        s += [
            Step(
                f"pick-random-{seed}",
                outputs=[str(pick)],
                after=["tokenize"],
                func_id=f"pick:{seed}",
                func=lambda p=pick, sd=seed: _pick(p, data, sd),
            ),
            Step(
                f"select-random-{seed}",
                ["select", "--data", str(data / "corpus"), "--scores", str(pick)]
                + ["--method", "threshold", "--threshold", "0.5", "--out", str(sel)],
                outputs=_ds(sel),
                after=[f"pick-random-{seed}"],
            ),
            Step(
                f"order-random-{seed}",
                ["order", "--data", str(sel), "--scores", f"{sel}.scores.npy", *shuffle, "--out", str(ordered)],
                outputs=_ds(ordered),
                after=[f"select-random-{seed}"],
            ),
        ]
        src["random", seed] = ordered, f"order-random-{seed}"
        full = w / "curated" / f"full-{seed}" / "ordered"  # the arms' path: order --method shuffle, stored order
        s.append(
            Step(
                f"order-full-{seed}",
                ["order", "--data", str(data / "corpus"), "--scores", str(zeros), *shuffle, "--out", str(full)],
                outputs=_ds(full),
                after=["zeros-full"],
            )
        )
        src["full", seed] = full, f"order-full-{seed}"
        src["full-pretrain-shuffle", seed] = data / "corpus", "tokenize"  # the old path: pretrain --shuffle
        for arm in ONLINE_ARMS:  # candidates from FULL's stream: the whole corpus in seed k's shuffle
            src[arm, seed] = full, f"order-full-{seed}"
    lay = layout(w, c)
    # online selection towards the annotation's target set (not the held-out half the curves measure)
    online = ["--online-select", "dot", "--target", str(lay["target"])]
    online += ["--candidates-per-pick", str(c["online_c"]), "--target-refresh", str(c["online_refresh"])]
    for seed in seeds:
        for arm in wanted:
            path, made_by = src[arm, seed]
            ck = w / "final" / arm / f"s{seed}" / "ckpt"
            extra = ["--shuffle"] if arm == "full-pretrain-shuffle" else []
            extra += online if arm in ONLINE_ARMS else []
            curve = ["--valid-data", str(data / "holdout"), "--eval-interval", str(c["eval_interval"])]
            curve += ["--eval-max-length", str(EVAL_LENGTH)]
            n = arm_steps_count(c, arm)
            s += [
                Step(
                    f"pretrain-{arm}-s{seed}",
                    _pretrain(w / "tokenizer", path, ck, n, c["plr"], c, seed) + extra + curve,
                    outputs=[str(ck)],
                    after=[made_by, "tokenize-holdout"]
                    + ([f"tokenize-target-{lay['tn']}"] if arm in ONLINE_ARMS else []),
                    resume_flag="--resume",
                ),
            ]
            if seed == seeds[0]:  # the table's losses are the curves' last points; this checks them
                s.append(
                    Step(
                        f"evaluate-{arm}-s{seed}",
                        ["evaluate", "--model", str(ck), "--data", str(data / "holdout")]
                        + ["--max-length", str(EVAL_LENGTH)],
                        outputs=[str(w / "logs" / f"evaluate-{arm}-s{seed}.stdout")],
                        after=[f"pretrain-{arm}-s{seed}", "tokenize-holdout"],
                    )
                )
    return s


def _pretrain(tok, data, out, steps, lr, c, seed) -> list[str]:
    return [
        "pretrain",
        "--model-config",
        "tiny",
        "--tokenizer",
        str(tok),
        "--data",
        str(data),
        "--max-length",
        str(c["seq"]),
        "--global-batch-size",
        str(c["gbs"]),
        "--steps",
        str(steps),
        "--lr",
        str(lr),
        "--warmup-steps",
        str(max(1, steps // 20)),
        "--out",
        str(out),
        "--seed",
        str(seed),
    ]


def _zeros(path: Path, data: Path) -> None:
    """A flat score per corpus sequence: ``lqs order --method shuffle`` of the whole corpus reads one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros(len(read_meta(data / "corpus")), dtype=np.float32))


def _pick(path: Path, data: Path, seed: int) -> None:
    n = len(read_meta(data / "corpus"))
    pick = np.zeros(n, dtype=np.float32)
    pick[np.random.default_rng(seed).choice(n, size=n // 2, replace=False)] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pick)


def _aucs(scores: np.ndarray, kinds: np.ndarray) -> dict:
    clean = kinds == "clean"
    out = {}
    for other in ("degraded", "lower"):
        keep = clean | (kinds == other)
        out[f"clean>{other}"] = auc(scores[keep], clean[keep])
    return out


def degraded_pairs(corpus_jsonl: Path) -> np.ndarray:
    """``[n, 2]`` (clean index, degraded-copy index) in corpus order, matched by content: a shuffled copy
    has its source's words as a multiset, a replaced copy keeps 60% of its source's words in place."""
    rows = [json.loads(line) for line in open(corpus_jsonl)]
    words = [r["text"].split() for r in rows]
    by_bag, by_len = {}, {}
    for i, r in enumerate(rows):
        if r["kind"] == "clean":
            by_bag.setdefault(tuple(sorted(words[i])), i)
            by_len.setdefault(len(words[i]), []).append(i)
    pairs = []
    for i, r in enumerate(rows):
        if r["source"] == "shuffled-copies" and tuple(sorted(words[i])) in by_bag:
            pairs.append((by_bag[tuple(sorted(words[i]))], i))
        elif r["source"] == "replaced-copies":
            best = max(
                by_len.get(len(words[i]), []),
                key=lambda j: sum(a == b for a, b in zip(words[j], words[i])),
                default=None,
            )
            if best is not None:
                pairs.append((best, i))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def paired(scores: np.ndarray, pairs: np.ndarray) -> float:
    """Share of (clean, its degraded copy) pairs where the clean document scores higher (ties 1/2)."""
    if len(pairs) == 0:
        return float("nan")
    a, b = scores[pairs[:, 0]], scores[pairs[:, 1]]
    return float(((a > b) + 0.5 * (a == b)).mean())


def _by_source(scores: np.ndarray, meta: list[dict]) -> dict:
    src = np.array([r["source"] for r in meta], dtype=object)
    z = (scores - scores.mean()) / (scores.std() or 1.0)
    return {k: round(float(z[src == k].mean()), 3) for k in sorted(set(src), key=lambda k: -z[src == k].mean())}


def collect(w: Path, c: dict, runner: Runner, seeds: list[int], annotation_only: bool) -> dict:
    res: dict = {"annotation": {}, "scorer": {}, "loss": {}}
    pmeta = read_meta(w / "data" / "proxy")
    pk = np.array([r["kind"] for r in pmeta], dtype=object)
    pairs = degraded_pairs(w / "corpus" / "corpus.jsonl")
    where = {int(j): k for k, j in enumerate(np.load(w / "data" / "proxy.indices.npy"))}
    ppairs = np.array([(where[a], where[b]) for a, b in pairs if a in where and b in where]).reshape(-1, 2)
    for m in c["methods"]:
        if not (layout(w, c)["annotate"][m] / "annotate.json").is_file():
            continue
        rec = json.loads((layout(w, c)["annotate"][m] / "annotate.json").read_text())
        raw = np.load(layout(w, c)["annotate"][m] / "raw_scores.npy")
        curve = [p["loss"] for p in rec["target_loss_curve"]]
        res["annotation"][m] = {
            **_aucs(raw, pk),
            "paired": paired(raw, ppairs),
            "pairs": len(ppairs),
            "by_source": _by_source(raw, pmeta),
            "lr": rec["arguments"]["lr"],
            "health_ok": rec["health"]["ok"],
            "warnings": [x["kind"] for x in rec["health"]["warnings"]],
            "target_loss": [round(curve[0], 4), round(min(curve), 4), round(curve[-1], 4)],
            "spearman": rec["health"]["spearman"],
            "seconds": rec["timings_s"],
        }
    if annotation_only:
        return res
    meta = read_meta(w / "data" / "corpus")
    kinds = np.array([r["kind"] for r in meta], dtype=object)
    for m in ("lqs", "pds"):
        if not (w / "scores" / m / "scores.npy").is_file():
            continue
        sc = np.load(w / "scores" / m / "scores.npy").astype(np.float64)
        res["scorer"][m] = {
            **_aucs(sc, kinds),
            "paired": paired(sc, pairs),
            "pairs": len(pairs),
            "by_source": _by_source(sc, meta),
        }
    res["study"] = {}
    for n in c["study"]:
        cn = dict(c, am_steps=n)
        if not (layout(w, cn)["annotate"]["lqs"] / "annotate.json").is_file():
            continue
        a = collect(w, dict(cn, methods=["lqs"], study=[]), runner, seeds, True)["annotation"]["lqs"]
        sc = w / "scores" / f"lqs-am{n}" / "scores.npy"
        scorer = (
            {**_aucs(np.load(sc).astype(np.float64), kinds), "paired": paired(np.load(sc), pairs)}
            if sc.is_file()
            else {}
        )
        res["study"][n] = {"annotation": a, "scorer": scorer}
    res["annotation_model_fit"] = {n: _fit(w, dict(c, am_steps=n)) for n in [c["am_steps"], *c["study"]]}
    final, curves, agree = {}, {}, []
    per_step = c["gbs"] * c["seq"]
    for arm in arm_list(c):
        for seed in seeds:
            if f"pretrain-{arm}-s{seed}" not in runner.timings:
                continue
            t, lo = valid_curve(w / "final" / arm / f"s{seed}" / "ckpt", per_step)
            n = arm_steps_count(c, arm)
            if len(t) == 0 or t[-1] != n * per_step:
                raise SystemExit(f"{arm} seed {seed}: its curve does not reach step {n}")
            final.setdefault(arm, {})[seed] = float(lo[-1])  # lqs evaluate's number of the final model
            curves.setdefault(arm, {})[seed] = (t, lo)
            name = f"evaluate-{arm}-s{seed}"
            if name in runner.timings:
                loss = float(json.loads(runner.stdout_of(name).strip().splitlines()[-1])["loss"])
                agree.append(abs(float(lo[-1]) - loss) / loss)
    res["loss"] = {a: {str(k): v for k, v in by.items()} for a, by in final.items()}
    res["curves"] = {a: {str(k): [t.tolist(), lo.tolist()] for k, (t, lo) in by.items()} for a, by in curves.items()}
    res["curve_vs_evaluate"] = max(agree) if agree else None  # relative: the curve's last point, lqs evaluate
    res["compare"] = compare_arms(final, curves, "random")
    if curves:
        plot_curves(curves, w / "curves.png", f"target-holdout loss, {len(seeds)} seeds, {c['steps']} steps")
    res["goal"] = goal(res["compare"])
    if c["online_c"]:
        res["online"] = {"flops": online_flops(c), **online_verdicts(res["compare"])}
        res["online"]["kept_rate"] = {a: online_sources(w, a, seeds) for a in ONLINE_ARMS}
    res["seeds"] = seeds
    return res


def online_sources(w: Path, arm: str, seeds: list[int]) -> dict:
    """Per corpus source, the share of its candidates the online arm kept, mean over the seeds that have the
    pretrain's report (``OUT/online_selection_sources.json``), highest first."""
    rates: dict[str, list[float]] = {}
    for seed in seeds:
        path = w / "final" / arm / f"s{seed}" / "ckpt" / "online_selection_sources.json"
        if path.is_file():
            for src, r in json.loads(path.read_text())["sources"].items():
                rates.setdefault(src, []).append(r["kept_rate"])
    mean = {src: round(float(np.mean(v)), 3) for src, v in rates.items()}
    return dict(sorted(mean.items(), key=lambda kv: -kv[1]))


def _fit(w: Path, c: dict) -> dict:
    """How well the annotation model knows the target against the data it trained on, at theta_0 of the
    replay (annotate.json): the target loss, the proxy batches' loss, their ratio, and ln(vocabulary)."""
    path = layout(w, c)["annotate"]["lqs"] / "annotate.json"
    if not path.is_file():
        return {}
    h = json.loads(path.read_text())["health"]
    tgt, train = h["target_loss"]["start"], h["train_loss"]["first_quarter_mean"]
    return {
        "target": round(tgt, 4),
        "train": round(train, 4),
        "ratio": round(h["target_loss"].get("over_train", tgt / train), 4),  # an annotation before the figure: derived
        "uniform": round(h["target_loss"]["uniform"], 4),
    }


def goal(cmp: dict) -> dict | None:
    """The issue's goal for LQS's best ordering (by mean paired difference): it beats RANDOM by more than 2 std
    of the paired difference and reaches RANDOM's final loss with at most 70% of its tokens."""
    lqs = {a: r for a, r in cmp.items() if a.startswith("lqs-") and "-am" not in a and r.get("diff", {}).get("n")}
    if not lqs:
        return None
    best = min(lqs, key=lambda a: lqs[a]["diff"]["mean"])
    d, r = lqs[best]["diff"], lqs[best].get("token_ratio", {})
    z = -d["mean"] / d["std"] if d["n"] > 1 and d["std"] > 0 else float("nan")
    reached = bool(r) and r.get("reached") == r.get("seeds") and r.get("seeds", 0) > 0
    return {
        "arm": best,
        "paired_diff": d["mean"],
        "paired_std": d["std"],
        "stds": z,
        "token_ratio": r.get("mean"),
        "beats_by_2std": bool(z > 2),
        "ratio_at_most_0.7": bool(reached and r["mean"] <= 0.7),
    }


def online_verdicts(cmp: dict) -> dict:
    """Per online arm that has paired seeds: the paired difference against RANDOM, its std, how many std it is
    below zero, and whether that is more than 2 (the issue's bar, as for LQS's :func:`goal`)."""
    out = {}
    for arm in ONLINE_ARMS:
        d = cmp.get(arm, {}).get("diff")
        if not d or not d["n"]:
            continue
        z = -d["mean"] / d["std"] if d["n"] > 1 and d["std"] > 0 else float("nan")
        out[arm] = {
            "paired_diff": d["mean"],
            "paired_std": d["std"],
            "n": d["n"],
            "stds": z,
            "beats_by_2std": bool(z > 2),
        }
    return out


def table(res: dict) -> str:
    lines = ["| | LQS | PDS |", "|---|---|---|"]
    for stage in ("annotation", "scorer"):
        for k in ("clean>degraded", "clean>lower"):
            if res[stage]:
                v = [res[stage][m][k] if m in res[stage] else float("nan") for m in ("lqs", "pds")]
                lines.append(f"| {stage} AUC {k} | {v[0]:.3f} | {v[1]:.3f} |")
        if res[stage]:
            v = [res[stage][m]["paired"] if m in res[stage] else float("nan") for m in ("lqs", "pds")]
            n = max(res[stage][m]["pairs"] for m in res[stage])
            lines.append(f"| {stage}: clean above its own degraded copy ({n} pairs) | {v[0]:.3f} | {v[1]:.3f} |")
    a = res["annotation"]
    for m in ("lqs", "pds"):  # an annotation-only run of one method
        if m not in a:
            a = {**a, m: {"lr": float("nan"), "target_loss": [], "health_ok": "-", "warnings": [], "by_source": {}}}
    lines.append(f"| annotation eta | {a['lqs']['lr']:g} | {a['pds']['lr']:g} |")
    lines.append(
        f"| replay L_tgt start / min / end | {' / '.join(map(str, a['lqs']['target_loss']))} | "
        f"{' / '.join(map(str, a['pds']['target_loss']))} |"
    )
    lines.append(
        f"| health ok (warnings) | {a['lqs']['health_ok']} ({', '.join(a['lqs']['warnings']) or '-'}) | "
        f"{a['pds']['health_ok']} ({', '.join(a['pds']['warnings']) or '-'}) |"
    )
    lines += ["", "Mean z-scored score per source (annotation, proxy set | scorer, whole corpus), best first:", ""]
    for stage in ("annotation", "scorer"):
        for m, r in res[stage].items():
            lines.append(f"- {stage} {m}: " + ", ".join(f"{k} {v:+.2f}" for k, v in r["by_source"].items()))
    if res.get("study"):
        lines += [
            "",
            "Annotation-model study (LQS):",
            "",
            "| annotation model | annotation AUC clean > degraded / lower "
            "| scorer AUC clean > degraded / lower | eta | replay L_tgt start / end |",
            "|---|---|---|---|---|",
        ]
        rows = {
            res["config"]["am_steps"]: {
                "annotation": res["annotation"].get("lqs", {}),
                "scorer": res["scorer"].get("lqs", {}),
            }
        }
        for n, r in {**rows, **res["study"]}.items():
            an, sc = r["annotation"], r["scorer"]
            if not an:
                continue
            lines.append(
                f"| {n} steps | {an['clean>degraded']:.3f} / {an['clean>lower']:.3f} | "
                f"{sc.get('clean>degraded', float('nan')):.3f} / {sc.get('clean>lower', float('nan')):.3f} | "
                f"{an['lr']:g} | {an['target_loss'][0]} / {an['target_loss'][-1]} |"
            )
    if any(res.get("annotation_model_fit", {}).values()):
        lines += ["", "Annotation model at theta_0: target loss / proxy-batch loss (ratio), uniform:"]
        for n, f in res["annotation_model_fit"].items():
            if f:
                lines.append(f"- {n} steps: {f['target']} / {f['train']} ({f['ratio']}), ln V {f['uniform']}")
    if res.get("compare"):
        lines += ["", arm_table(res["compare"], res["config"])]
        if res.get("curve_vs_evaluate") is not None:
            lines.append(
                f"\n(the losses are the curves' last points; `lqs evaluate` of each arm's seed-{res['seeds'][0]} model "
                f"agrees to {res['curve_vs_evaluate']:.1e} relative)"
            )
        g = res.get("goal")
        if g:
            lines.append(
                f"\nGoal (LQS's best ordering, {g['arm']}): paired difference {g['paired_diff']:+.4f} +- "
                f"{g['paired_std']:.4f} ({g['stds']:.1f} std; > 2: {'met' if g['beats_by_2std'] else 'not met'}), "
                f"tokens to RANDOM's final loss {_num(g['token_ratio']):.2f} "
                f"of RANDOM's (<= 0.70: {'met' if g['ratio_at_most_0.7'] else 'not met'})"
            )
        on = res.get("online")
        if on:
            c, f = res["config"], on["flops"]
            lines.append(
                f"\nOnline selection (dot, C={c['online_c']}, target refresh {c['online_refresh']}): ONLINE-DOT at "
                f"{c['steps']} steps, ONLINE-DOT-FLOPS at {f['steps']} steps (an online step is {f['ratio']:.2f} "
                f"plain steps of training FLOPs, the candidate pass and target gradient counted)"
            )
            for arm in ONLINE_ARMS:
                if arm in on:
                    v = on[arm]
                    lines.append(
                        f"- {arm.upper()}: paired difference {v['paired_diff']:+.4f} +- {v['paired_std']:.4f} "
                        f"over {v['n']} seeds ({-v['stds']:+.1f} paired std; beats RANDOM by more than 2 std: "
                        f"{'met' if v['beats_by_2std'] else 'not met'})"
                    )
                if on.get("kept_rate", {}).get(arm):
                    rates = ", ".join(f"{k} {v:.2f}" for k, v in on["kept_rate"][arm].items())
                    lines.append(f"  kept share of each source's candidates (mean over seeds): {rates}")
    return "\n".join(lines)


def _num(x) -> float:
    return float("nan") if x is None else x


def _signed(d: dict | None) -> str:
    if not d or d["n"] == 0:
        return ""
    return f"{d['mean']:+.4f}" + (f" +- {d['std']:.4f}" if d["n"] > 1 else "")


def arm_table(cmp: dict, c: dict) -> str:
    """The arms' table: final loss over seeds, the paired difference against RANDOM, token efficiency."""
    lines = [
        "| arm | target-holdout loss (mean +- std over seeds) | paired difference vs RANDOM | in paired std "
        "| tokens to RANDOM's final loss (share of RANDOM's) | mean gap to RANDOM's curve |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arm_list(c):
        if arm not in cmp:
            continue
        r = cmp[arm]
        d = r.get("diff")
        z = d["mean"] / d["std"] if d and d["n"] > 1 and d["std"] > 0 else float("nan")
        noise = " (within noise)" if r.get("within_noise") else ""
        lines.append(
            f"| {arm.upper()} ({r['loss']['n']}) | {format_pm(r['loss'])} | "
            f"{_signed(d)}{noise} | "
            f"{'' if not d or d['n'] < 2 else f'{z:+.1f}'} | {format_ratio(r.get('token_ratio')) if d else ''} | "
            f"{format_pm(r['area'], 4) if d and r.get('area') else ''} |"
        )
    return "\n".join(lines)


PARTS = (
    ("tokenizer, tokenize (corpus, targets)", ("train-tokenizer", "tokenize")),
    ("annotation models + export-hf", ("pretrain-annotation-model", "export-annotation-model")),
    ("sample-proxy, annotate", ("sample-proxy", "annotate")),
    (
        "scorers: prepare, train, score, select",
        ("prepare-scorer-data", "train-scorer", "score-", "select-lqs", "select-pds"),
    ),
    ("picks, selects and orders of the arms", ("zeros-", "pick-", "select-random", "order-")),
    ("pretrain the arms (with their curves)", ("pretrain-",)),
    ("evaluate the arms", ("evaluate-",)),
)


def time_parts(timings: dict) -> dict:
    """Seconds per part of the chain (PARTS: the first whose prefix a step name has)."""
    out = {name: 0.0 for name, _ in PARTS} | {"total": 0.0}
    for step, t in timings.items():
        part = next((name for name, prefixes in PARTS if step.startswith(prefixes)), None)
        out[part or "other"] = out.get(part or "other", 0.0) + t["seconds"]
        out["total"] += t["seconds"]
    return {k: round(v, 1) for k, v in out.items()}


def needed(steps: list[Step], targets: set[str]) -> list[Step]:
    """The steps of ``targets`` and every step they read from, in plan order."""
    by_name, keep, todo = {s.name: s for s in steps}, set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += by_name[name].after
    return [s for s in steps if s.name in keep]


def finished(runner: Runner, steps: list[Step]) -> None:
    """``--collect-only``: record the steps that finished (their marker and outputs exist) as reused."""
    for step in steps:
        marker = runner.markers / f"{step.name}.json"
        if marker.is_file() and all(os.path.exists(p) for p in step.outputs):
            runner.timings[step.name] = {"seconds": json.loads(marker.read_text()).get("seconds", 0.0), "reused": True}


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


_TYPES = {"lr": str, "study": _int_list}
_HELP = {
    "study": "the annotation-model study: other annotation-model training lengths (comma-separated, '' none), "
    f"each with its LQS annotation, scorer and the arms {', '.join(STUDY_ARMS)} over every seed ",
    "eval_interval": "every arm's target-holdout curve: evaluate every N pretraining steps ",
    "online_c": "the online arms (online-dot, online-dot-flops): --candidates-per-pick C, 0 for no online arms ",
    "online_refresh": "the online arms' --target-refresh ",
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--work",
        default=None,
        help="work directory (finished steps are reused on a rerun; required "
        "except with --tiny, which defaults to a fresh temporary directory)",
    )
    p.add_argument("--tiny", action="store_true", help="a smoke test of the whole chain (about a minute)")
    p.add_argument(
        "--seeds", type=int, default=3, help="seeds 1..N of every arm (pretrain --seed; RANDOM's pick and the shuffles)"
    )
    p.add_argument("--annotation-only", action="store_true", help="stop after the annotation (its AUCs only)")
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing: the table of the steps that finished (a run cut short, or arms run in several processes)",
    )
    p.add_argument("--methods", default="lqs,pds", help="with --annotation-only: the methods to annotate")
    p.add_argument("--lqs-only", action="store_true", help="same as --methods lqs")
    p.add_argument(
        "--arms",
        default=None,
        help=f"pretrain and evaluate only these arms (comma-separated: {', '.join(arm_list(FULL))}), "
        "e.g. to run arms in parallel processes",
    )
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every step (1 on a loaded machine)")
    for k, v in FULL.items():
        p.add_argument(
            f"--{k.replace('_', '-')}",
            default=None,
            type=_TYPES.get(k, type(v)),
            help=_HELP.get(k, "") + f"(full run: {v})",
        )
    args = p.parse_args()
    c = dict(TINY if args.tiny else FULL)
    c.update({k: getattr(args, k) for k in FULL if getattr(args, k) is not None})
    c["arms"] = args.arms.split(",") if args.arms else None
    methods = "lqs" if args.lqs_only else args.methods
    c["methods"] = methods.split(",") if args.annotation_only else ["lqs", "pds"]
    if args.work is None and not args.tiny:
        p.error("--work is required (except with --tiny)")
    if args.work is None:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="lqs-quality-tiny-")
        import atexit
        import shutil

        atexit.register(shutil.rmtree, args.work, True)  # a throwaway run leaves nothing behind
    w = Path(args.work).resolve()
    t0 = time.time()
    install_packages()
    if not (w / "corpus" / "manifest.json").is_file():
        build_corpus(w / "corpus", tiny=args.tiny, seed=args.corpus_seed)
    seeds = list(range(1, args.seeds + 1))
    runner = Runner(w)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    steps = plan(w, c, seeds, args.annotation_only)
    if c["arms"]:  # only what these arms need, so that processes with other arms run beside this one
        arm_runs = [s.name for s in steps if s.name.startswith(("pretrain-", "evaluate-"))]
        steps = needed(steps, {n for n in arm_runs if not n.startswith("pretrain-annotation-model")})
    if args.collect_only:
        finished(runner, steps)
    else:
        runner.run(steps)
    if c["arms"] and not args.collect_only:
        print(f"\narms {', '.join(c['arms'])} done; the table: rerun with --collect-only (and without --arms)")
        return
    res = collect(w, c, runner, seeds, args.annotation_only)
    res.update(
        config=c,
        seconds=round(time.time() - t0, 1),
        timings=runner.timings,
        corpus=json.loads((w / "corpus" / "manifest.json").read_text()),
    )
    (w / "results.json").write_text(json.dumps(res, indent=2))
    with open(w / "results.jsonl", "a") as f:  # every run of a sweep, one line each
        f.write(json.dumps(res) + "\n")
    res["parts"] = time_parts(runner.timings)
    (w / "results.json").write_text(json.dumps(res, indent=2))
    print()
    print(table(res))
    print("\nseconds per part (steps run now; reused steps at their first run's time):")
    for part, sec in res["parts"].items():
        print(f"  {part:<36} {sec:8.1f}")
    print(f"\n{res['seconds'] / 60:.1f} min in all; results in {w / 'results.json'}")


if __name__ == "__main__":
    main()
