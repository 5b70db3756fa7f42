"""The pipeline as a list of public ``lqs`` commands, built from a :class:`PipelineConfig`.

Layout under ``WORKDIR`` (every path of a run is here, so a run is one directory)::

    tokenizer/                       trained tokenizer (unless tokenizer.path is given)
    data/corpus.{bin,idx}            the tokenized corpus
    data/target.{bin,idx}            the tokenized target conversations
    data/proxy.{bin,idx}, .indices.npy   the proxy sample
    annotation_model/ckpt, hf/       the annotation LM (unless annotation_model.init_from)
    annotate/METHOD/                 raw_scores.npy, scores.npy, annotate.json
    scorer/METHOD/data, ckpt         scorer training data and checkpoint
    scores/METHOD/scores.npy         the scorer's scores for the whole corpus
    curated/ARM/selected, ordered    selection and ordering (+ .scores.npy, .indices.npy)
    final/ARM/ckpt                   the model pretrained on the arm's data
    logs/STEP.log                    each step's command and output
    pipeline.yaml, results.json      the resolved config; the final table

ARM is each annotation method (``lqs``, ``pds``) plus the ``random`` baseline: a seeded
random selection of exactly as many sequences as the first method's selection, shuffled.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from lqs_megatron.lqs.health import require_healthy
from lqs_megatron.pipeline.config import PipelineConfig
from lqs_megatron.pipeline.runner import Step
from lqs_megatron.utils.atomic import save_npy


def _ds(prefix: Path) -> list[str]:
    return [f"{prefix}.bin", f"{prefix}.idx"]


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


class Plan:
    """Paths of one run and the steps that make them."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        w = self.w = Path(cfg.workdir)
        self.tokenizer = Path(cfg.tokenizer.path) if cfg.tokenizer.path else w / "tokenizer"
        self.corpus = w / "data" / "corpus"
        self.target = w / "data" / "target"
        self.proxy = w / "data" / "proxy"
        self.annotation_hf = (
            Path(cfg.annotation_model.init_from) if cfg.annotation_model.init_from else w / "annotation_model" / "hf"
        )
        self.methods = list(cfg.annotate.methods)
        self.arms = self.methods + (["random"] if cfg.selection.baseline == "random" else [])

    def raw_inputs(self) -> list[str]:
        """The corpus files (globs expanded, sorted)."""
        from glob import glob  # noqa: PLC0415

        return sorted({f for pattern in self.cfg.data.corpus for f in (glob(pattern) or [pattern])})

    # paths per method / arm
    def annotate_dir(self, m: str) -> Path:
        return self.w / "annotate" / m

    def corpus_scores(self, m: str) -> Path:
        return self.w / "scores" / m / "scores.npy"

    def selected(self, arm: str) -> Path:
        return self.w / "curated" / arm / "selected"

    def train_data(self, arm: str) -> Path:
        if arm == "random" or self.cfg.selection.order != "none":
            return self.w / "curated" / arm / "ordered"
        return self.selected(arm)

    def final_ckpt(self, arm: str) -> Path:
        return self.w / "final" / arm / "ckpt"

    def steps(self) -> list[Step]:
        c = self.cfg
        s: list[Step] = []
        tok = str(self.tokenizer)
        if not c.tokenizer.path:
            s.append(
                Step(
                    "train-tokenizer",
                    [
                        "train-tokenizer",
                        "--input",
                        *c.data.corpus,
                        "--field",
                        c.data.field,
                        "--vocab-size",
                        str(c.tokenizer.vocab_size),
                        "--out",
                        tok,
                    ],
                    outputs=[tok],
                    inputs=self.raw_inputs(),
                )
            )
        tok_dep = [] if c.tokenizer.path else ["train-tokenizer"]
        s.append(
            Step(
                "tokenize",
                [
                    "tokenize",
                    "--input",
                    *c.data.corpus,
                    "--field",
                    c.data.field,
                    "--tokenizer",
                    tok,
                    "--out",
                    str(self.corpus),
                    "--mode",
                    c.data.mode,
                    *_opt("--max-length", c.data.max_length),
                    "--workers",
                    str(c.data.workers),
                ],
                outputs=_ds(self.corpus),
                after=tok_dep,
                inputs=self.raw_inputs(),
            )
        )
        s.append(
            Step(
                "tokenize-target",
                [
                    "tokenize-target",
                    "--input",
                    c.data.target,
                    "--field",
                    c.data.target_field,
                    "--tokenizer",
                    tok,
                    "--out",
                    str(self.target),
                ],
                outputs=_ds(self.target),
                after=tok_dep,
                inputs=[c.data.target],
            )
        )
        model_dep: list[str] = []
        if not c.annotation_model.init_from:
            a = c.annotation_model
            ckpt = str(self.w / "annotation_model" / "ckpt")
            s.append(
                Step(
                    "pretrain-annotation-model",
                    self._pretrain_argv(a, [str(self.corpus)], ckpt),
                    outputs=[ckpt],
                    after=["tokenize"],
                    distributed=True,
                    resume_flag="--resume",
                )
            )
            s.append(
                Step(
                    "export-annotation-model",
                    ["export-hf", "--checkpoint", ckpt, "--out", str(self.annotation_hf)],
                    outputs=[str(self.annotation_hf)],
                    after=["pretrain-annotation-model"],
                )
            )
            model_dep = ["export-annotation-model"]
        s.append(
            Step(
                "sample-proxy",
                [
                    "sample-proxy",
                    "--data",
                    str(self.corpus),
                    "--num",
                    str(c.proxy.num),
                    "--seed",
                    str(c.proxy.seed),
                    "--out",
                    str(self.proxy),
                ],
                outputs=[*_ds(self.proxy), f"{self.proxy}.indices.npy"],
                after=["tokenize"],
            )
        )
        an = c.annotate
        train = self.proxy if an.train == "proxy" else self.corpus
        for m in self.methods:
            out = self.annotate_dir(m)
            s.append(
                Step(
                    f"annotate-{m}",
                    [
                        "annotate",
                        "--model",
                        str(self.annotation_hf),
                        "--train",
                        str(train),
                        "--target",
                        str(self.target),
                        "--proxy",
                        str(self.proxy),
                        "--steps",
                        str(an.steps),
                        "--lr",
                        str(an.lr),
                        "--batch-size",
                        str(an.batch_size),
                        "--interval",
                        str(an.interval),
                        "--max-length",
                        str(an.max_length),
                        "--method",
                        m,
                        "--out",
                        str(out),
                        *an.extra_args,
                    ],
                    outputs=[str(out / "raw_scores.npy"), str(out / "scores.npy")],
                    after=["tokenize-target", "sample-proxy", *model_dep],
                    distributed=True,
                    resume_flag="--resume",
                    state=[str(out)],
                )
            )
            s.append(
                Step(
                    f"check-annotate-{m}",
                    after=[f"annotate-{m}"],
                    func=partial(require_healthy, str(out), f"{m} annotation", allow=an.allow_unhealthy),
                    func_id=f"health-gate:{'off' if an.allow_unhealthy else 'on'}",
                )
            )
        sc = c.scorer
        for m in self.methods:
            data = self.w / "scorer" / m / "data"
            ckpt = self.w / "scorer" / m / "ckpt"
            s.append(
                Step(
                    f"prepare-scorer-data-{m}",
                    [
                        "prepare-scorer-data",
                        "--proxy",
                        str(self.proxy),
                        "--scores",
                        str(self.annotate_dir(m) / "scores.npy"),
                        "--out",
                        str(data),
                        "--valid-num",
                        str(sc.valid_num),
                    ],
                    outputs=[str(data)],
                    after=[f"annotate-{m}", f"check-annotate-{m}"],
                )
            )
            if sc.base == "annotation":
                base, base_dep = ["--base", str(self.annotation_hf)], model_dep
            elif sc.base:
                base, base_dep = ["--base", sc.base], []
            else:
                base, base_dep = ["--model-config", sc.model_config, "--tokenizer", tok], tok_dep
            s.append(
                Step(
                    f"train-scorer-{m}",
                    [
                        "train-scorer",
                        *base,
                        "--data",
                        str(data),
                        "--out",
                        str(ckpt),
                        "--epochs",
                        str(sc.epochs),
                        "--lr",
                        str(sc.lr),
                        "--batch-size",
                        str(sc.batch_size),
                        "--warmup",
                        str(sc.warmup),
                        *sc.extra_args,
                    ],
                    outputs=[str(ckpt)],
                    after=[f"prepare-scorer-data-{m}", *base_dep],
                    distributed=True,
                    resume_flag="--resume",
                )
            )
            out = self.corpus_scores(m).parent
            s.append(
                Step(
                    f"score-{m}",
                    [
                        "score",
                        "--scorer",
                        str(ckpt),
                        "--data",
                        str(self.corpus),
                        "--out",
                        str(out),
                        *sc.score_extra_args,
                    ],
                    outputs=[str(self.corpus_scores(m))],
                    after=[f"train-scorer-{m}", "tokenize"],
                    distributed=True,
                    state=[str(out)],
                )
            )
        sel = c.selection
        for m in self.methods:
            s += self._curate(m, str(self.corpus_scores(m)), [f"score-{m}"], sel.method, sel.order)
        if "random" in self.arms:
            first = self.methods[0]
            rnd = self.w / "curated" / "random" / "random_pick.npy"
            s.append(
                Step(
                    "pick-random",
                    outputs=[str(rnd)],
                    after=[f"select-{first}"],
                    func=lambda: self._pick_random(first, rnd),
                    func_id=f"pick-random:{sel.seed}",
                )
            )
            s += self._curate("random", str(rnd), ["pick-random"], "random", "shuffle")
        p, e = c.pretrain, c.evaluate
        for arm in self.arms:
            ckpt = str(self.final_ckpt(arm))
            data_step = f"order-{arm}" if (arm == "random" or sel.order != "none") else f"select-{arm}"
            s.append(
                Step(
                    f"pretrain-{arm}",
                    self._pretrain_argv(p, [str(self.train_data(arm))], ckpt),
                    outputs=[ckpt],
                    after=[data_step, *tok_dep],
                    distributed=True,
                    resume_flag="--resume",
                )
            )
            s.append(
                Step(
                    f"evaluate-{arm}",
                    ["evaluate", "--model", ckpt, "--data", str(self.target), "--max-length", str(e.max_length)],
                    outputs=[str(self.w / "logs" / f"evaluate-{arm}.stdout")],
                    after=[f"pretrain-{arm}", "tokenize-target"],
                )
            )
        return s

    def _pretrain_argv(self, t, data: list[str], out: str) -> list[str]:
        return [
            "pretrain",
            "--model-config",
            t.model_config,
            "--tokenizer",
            str(self.tokenizer),
            "--data",
            *data,
            "--max-length",
            str(t.max_length),
            "--global-batch-size",
            str(t.global_batch_size),
            "--steps",
            str(t.steps),
            "--lr",
            str(t.lr),
            "--out",
            out,
            "--seed",
            str(t.seed),
            *t.extra_args,
        ]

    def _curate(self, arm: str, scores: str, after: list[str], method: str, order: str) -> list[Step]:
        sel = self.cfg.selection
        selected = self.selected(arm)
        if method == "random":  # the pick file marks exactly the chosen sequences with 1
            how = ["--method", "threshold", "--threshold", "0.5"]
        elif method == "top-r":
            how = ["--method", "top-r", "--r", str(sel.r)]
        elif method == "threshold":
            how = ["--method", "threshold", "--threshold", str(sel.threshold)]
        else:
            how = ["--method", "top-k", "--k", str(sel.k)]
        sidecars = [f"{selected}.scores.npy", f"{selected}.indices.npy"]
        steps = [
            Step(
                f"select-{arm}",
                ["select", "--data", str(self.corpus), "--scores", scores, *how, "--out", str(selected)],
                outputs=[*_ds(selected), *sidecars],
                after=[*after, "tokenize"],
            )
        ]
        if order != "none":
            ordered = self.train_data(arm)
            extra = ["--layers", str(sel.layers)] if order == "folding" else []
            extra += ["--seed", str(sel.seed)] if order == "shuffle" else []
            steps.append(
                Step(
                    f"order-{arm}",
                    [
                        "order",
                        "--data",
                        str(selected),
                        "--scores",
                        sidecars[0],
                        "--method",
                        order,
                        *extra,
                        "--out",
                        str(ordered),
                    ],
                    outputs=[*_ds(ordered), f"{ordered}.scores.npy", f"{ordered}.indices.npy"],
                    after=[f"select-{arm}"],
                )
            )
        return steps

    def _pick_random(self, first_method: str, out: Path) -> None:
        n_keep = len(np.load(f"{self.selected(first_method)}.indices.npy"))
        n = len(np.load(self.corpus_scores(first_method)))
        rng = np.random.default_rng(self.cfg.selection.seed)
        pick = np.zeros(n, dtype=np.float32)
        pick[rng.choice(n, size=n_keep, replace=False)] = 1.0
        os.makedirs(out.parent, exist_ok=True)
        save_npy(out, pick)
