"""Real-text quality benchmark: does LQS select text that helps the target, on text nobody wrote for it?

The corpus (``benchmarks/quality_corpus.py``) comes from Debian documentation packages
installed at benchmark time (``apt-get install perl-doc postgresql-doc linux-doc``): clean
technical prose, lower-value real text, degraded copies, and perlfaq as the LIMA-like target
(half for the annotation, half held out). The whole chain runs as a user would run it, one
public ``lqs`` command per step (``lqs_megatron.pipeline.runner``: logs in ``WORK/logs``,
finished steps reused on a rerun): train-tokenizer, tokenize (``--keep-fields source,kind``),
tokenize-target, pretrain + export-hf the annotation model, sample-proxy, annotate (LQS and
PDS), prepare-scorer-data, train-scorer, score, select top-50%, order, pretrain every arm from
scratch at equal tokens, evaluate on the held-out target items. Arms: FULL (the whole corpus,
shuffled), RANDOM (a random half, shuffled; ``--seeds`` seeds), PDS+folding, LQS+shuffle,
LQS+folding, and the DELT follow-up's orderings of the same LQS half: LQS+stair, LQS+saw and
LQS+folding+jitter (``--jitter`` positions per window). Prints the table of docs/quality.md and
writes ``WORK/results.json``.

    python benchmarks/bench_quality.py --work /tmp/quality            # the full run (< 45 min on 2 cores)
    python benchmarks/bench_quality.py --tiny                           # smoke test, about a minute
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
)
TINY = dict(FULL, vocab=2048, doc_len=65, am_steps=20, proxy=64, T=4, K=2, L=32, scorer_epochs=1, steps=20, seq=32)
TINY["jitter"] = 32


def order_arms(c: dict) -> dict[str, tuple[str, list[str]]]:
    """The scored arms: name -> (the scores' method, the ``lqs order`` flags of its top half)."""
    folding = ["--method", "folding", "--layers", "3"]
    return {
        "pds-folding": ("pds", folding),
        "lqs-shuffle": ("lqs", ["--method", "shuffle", "--seed", "1"]),
        "lqs-folding": ("lqs", folding),
        "lqs-stair": ("lqs", ["--method", "stair"]),  # the follow-up's configs: 3 layers, 2 sections, 0.225
        "lqs-saw": ("lqs", ["--method", "saw"]),  # 2 layers, 3 sections, 0.075
        "lqs-folding-jitter": ("lqs", [*folding, "--jitter", str(c["jitter"]), "--seed", "1"]),
    }


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
    am_ckpt, am_hf, am = lay["am_ckpt"], lay["am_hf"], lay["am"]
    proxy = data / "proxy"
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
                str(proxy),
            ],
            outputs=_ds(proxy),
            after=["tokenize"],
        ),
    ]
    for m in c["methods"]:
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
    if annotation_only:
        return s
    for m in ("lqs", "pds"):
        sd, ck, sc = w / "scorer" / m / "data", w / "scorer" / m / "ckpt", w / "scores" / m
        s += [
            Step(
                f"prepare-scorer-data-{m}",
                [
                    "prepare-scorer-data",
                    "--proxy",
                    str(proxy),
                    "--scores",
                    str(lay["annotate"][m] / "scores.npy"),
                    "--out",
                    str(sd),
                ],
                outputs=[str(sd)],
                after=[f"annotate-{m}-{lay['an']}"],
            ),
            Step(
                f"train-scorer-{m}",
                [
                    "train-scorer",
                    "--base",
                    str(am_hf),
                    "--data",
                    str(sd),
                    "--out",
                    str(ck),
                    "--epochs",
                    str(c["scorer_epochs"]),
                    "--lr",
                    str(c["scorer_lr"]),
                    "--global-batch-size",
                    str(c["scorer_bs"]),
                    "--warmup-steps",
                    "20",
                ],
                outputs=[str(ck)],
                after=[f"prepare-scorer-data-{m}"],
                resume_flag="--resume",
            ),
            Step(
                f"score-{m}",
                ["score", "--scorer", str(ck), "--data", str(data / "corpus"), "--out", str(sc), "--no-progress"],
                outputs=[str(sc / "scores.npy")],
                after=[f"train-scorer-{m}"],
            ),
        ]
    arms: dict = order_arms(c)
    for m in ("lqs", "pds"):
        sel = w / "curated" / m / "selected"
        s.append(
            Step(
                f"select-{m}",
                [
                    "select",
                    "--data",
                    str(data / "corpus"),
                    "--scores",
                    str(w / "scores" / m / "scores.npy"),
                    "--method",
                    "top-r",
                    "--r",
                    "0.5",
                    "--out",
                    str(sel),
                ],
                outputs=_ds(sel),
                after=[f"score-{m}"],
            )
        )
    for arm, (m, how) in arms.items():
        sel, ordered = w / "curated" / m / "selected", w / "curated" / arm / "ordered"
        argv = ["order", "--data", str(sel), "--scores", f"{sel}.scores.npy", *how, "--out", str(ordered)]
        s.append(Step(f"order-{arm}", argv, outputs=_ds(ordered), after=[f"select-{m}"]))
    for seed in seeds:
        arm = f"random-{seed}"
        pick, sel, ordered = (
            w / "curated" / arm / "pick.npy",
            w / "curated" / arm / "selected",
            w / "curated" / arm / "ordered",
        )
        s += [
            Step(
                f"pick-{arm}",
                outputs=[str(pick)],
                after=["tokenize"],
                func_id=f"pick:{seed}",
                func=lambda p=pick, sd=seed: _pick(p, data, sd),
            ),
            Step(
                f"select-{arm}",
                [
                    "select",
                    "--data",
                    str(data / "corpus"),
                    "--scores",
                    str(pick),
                    "--method",
                    "threshold",
                    "--threshold",
                    "0.5",
                    "--out",
                    str(sel),
                ],
                outputs=_ds(sel),
                after=[f"pick-{arm}"],
            ),
            Step(
                f"order-{arm}",
                [
                    "order",
                    "--data",
                    str(sel),
                    "--scores",
                    f"{sel}.scores.npy",
                    "--method",
                    "shuffle",
                    "--seed",
                    str(seed),
                    "--out",
                    str(ordered),
                ],
                outputs=_ds(ordered),
                after=[f"select-{arm}"],
            ),
        ]
        arms[arm] = None
    arms["full"] = None
    for arm in arms:
        if c.get("arms") and arm not in c["arms"]:
            continue
        ck = w / "final" / arm / "ckpt"
        src = data / "corpus" if arm == "full" else w / "curated" / arm / "ordered"
        extra = ["--shuffle"] if arm == "full" else []
        s += [
            Step(
                f"pretrain-{arm}",
                _pretrain(tok, src, ck, c["steps"], c["plr"], c, 2) + extra,
                outputs=[str(ck)],
                after=["tokenize" if arm == "full" else f"order-{arm}"],
                resume_flag="--resume",
            ),
            Step(
                f"evaluate-{arm}",
                ["evaluate", "--model", str(ck), "--data", str(data / "holdout"), "--max-length", "1024"],
                outputs=[str(w / "logs" / f"evaluate-{arm}.stdout")],
                after=[f"pretrain-{arm}", "tokenize-holdout"],
            ),
        ]
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
        sc = np.load(w / "scores" / m / "scores.npy").astype(np.float64)
        res["scorer"][m] = {
            **_aucs(sc, kinds),
            "paired": paired(sc, pairs),
            "pairs": len(pairs),
            "by_source": _by_source(sc, meta),
        }
    for name in runner.timings:
        if name.startswith("evaluate-"):
            res["loss"][name[len("evaluate-") :]] = float(
                json.loads(runner.stdout_of(name).strip().splitlines()[-1])["loss"]
            )
    rnd = [res["loss"][f"random-{s}"] for s in seeds if f"random-{s}" in res["loss"]]
    if len(rnd) < len(seeds) or len(res["loss"]) < len(seeds) + 1 + len(order_arms(c)):  # some arms only (--arms)
        res["loss"] = {}
        return res
    res["random_mean"], res["random_std"] = float(np.mean(rnd)), float(np.std(rnd, ddof=1)) if len(rnd) > 1 else 0.0
    return res


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
    if res["loss"]:
        r, sd = res["random_mean"], res["random_std"]
        lines += ["", "| arm | target-holdout loss | vs RANDOM mean (in RANDOM std) |", "|---|---|---|"]
        lines.append(
            f"| RANDOM ({len([k for k in res['loss'] if k.startswith('random')])} seeds) | {r:.4f} +- {sd:.4f} | |"
        )
        for arm in ("full", *order_arms(res["config"])):
            v = res["loss"][arm]
            lines.append(f"| {arm.upper()} | {v:.4f} | {v - r:+.4f} ({(v - r) / sd if sd else float('nan'):+.1f}) |")
    return "\n".join(lines)


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
    p.add_argument("--seeds", type=int, default=3, help="RANDOM arm seeds (the noise floor)")
    p.add_argument("--annotation-only", action="store_true", help="stop after the annotation (its AUCs only)")
    p.add_argument("--methods", default="lqs,pds", help="with --annotation-only: the methods to annotate")
    p.add_argument("--lqs-only", action="store_true", help="same as --methods lqs")
    p.add_argument(
        "--arms",
        default=None,
        help="pretrain and evaluate only these arms (comma-separated: full, random-1.., "
        f"{', '.join(order_arms(FULL))}), e.g. to run arms in parallel processes",
    )
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every step (1 on a loaded machine)")
    for k, v in FULL.items():
        p.add_argument(
            f"--{k.replace('_', '-')}", default=None, type=type(v) if k != "lr" else str, help=f"(full run: {v})"
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
    runner.run(steps)
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
    print()
    print(table(res))
    print(f"\n{res['seconds'] / 60:.1f} min in all; results in {w / 'results.json'}")


if __name__ == "__main__":
    main()
