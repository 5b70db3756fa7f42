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
    final/ARM/ckpt, hf               the model pretrained on the arm's data, and its HF export
    logs/STEP.log                    each step's command and output
    pipeline.yaml, results.json      the resolved config; the final table

ARM is each annotation method (``lqs``, ``pds``) plus the ``random`` baseline: a seeded
random selection of exactly as many sequences as the first method's selection, shuffled.
An arm is pretrained once per seed (``pretrain.seeds``; the baseline ``pretrain.baseline_seeds``):
its first seed's run is ARM, each further seed's ``ARM-sSEED`` (``final/ARM-sSEED/ckpt``; no HF
export); a scored arm's runs share its selection and order, each baseline run has its own
(``curated/random-sSEED``).
"""

from __future__ import annotations

import inspect
import os
from functools import partial
from pathlib import Path

import numpy as np

from lqs_megatron.curate.config import SELECT_PARAMS, OrderConfig, SelectConfig
from lqs_megatron.curate.ordering import ORDERINGS
from lqs_megatron.data.config import SampleProxyConfig, TrainTokenizerConfig
from lqs_megatron.data.preprocess.conversations import TargetConfig
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig
from lqs_megatron.lqs.config import AnnotateConfig
from lqs_megatron.lqs.health import require_healthy
from lqs_megatron.options import section_values, to_argv
from lqs_megatron.pipeline.config import PipelineConfig
from lqs_megatron.pipeline.runner import Step
from lqs_megatron.scorer.config import PrepareScorerConfig, ScoreOptions, ScoreRun, TrainScorerConfig, TrainScorerRun
from lqs_megatron.training.config import EvaluateConfig, ExportHFConfig, PretrainConfig
from lqs_megatron.utils.atomic import save_npy


def _ds(prefix: Path) -> list[str]:
    return [f"{prefix}.bin", f"{prefix}.idx"]


def command(name: str, *parts) -> list[str]:
    """``[name, flags...]``: each part is ``(step dataclass, {setting: value})`` or a section whose
    settings of that step are taken (``(step, section)``); values equal to the step's default are left
    out. Paths become strings."""
    argv = [name]
    for step, values in parts:
        if not isinstance(values, dict):  # a config section: the settings it took from the step
            values = section_values(values, step)
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        argv += to_argv(step, values)
    return argv


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
        self.tok_dep = [] if cfg.tokenizer.path else ["train-tokenizer"]
        self.model_dep = [] if cfg.annotation_model.init_from else ["export-annotation-model"]
        self.arms = self.methods + (["random"] if cfg.selection.baseline == "random" else [])
        seeds = list(cfg.pretrain.seeds) or [cfg.pretrain.seed]
        base_seeds = list(cfg.pretrain.baseline_seeds) or seeds
        #: arm -> [(seed, run)]: the run names of its seeds (the first is the arm's own name)
        self.runs = {
            arm: [(s, arm if i == 0 else f"{arm}-s{s}") for i, s in enumerate(base_seeds if arm == "random" else seeds)]
            for arm in self.arms
        }
        self.baseline_runs = {run for _, run in self.runs.get("random", [])}

    def raw_inputs(self) -> list[str]:
        """The corpus files (globs expanded, sorted)."""
        from glob import glob

        return sorted({f for pattern in self.cfg.data.corpus for f in (glob(pattern) or [pattern])})

    # paths per method / arm
    def annotate_dir(self, m: str) -> Path:
        return self.w / "annotate" / m

    def corpus_scores(self, m: str) -> Path:
        return self.w / "scores" / m / "scores.npy"

    def selected(self, arm: str) -> Path:
        return self.w / "curated" / arm / "selected"

    def train_data(self, arm: str) -> Path:
        """The training data of an arm, or of a baseline run (each has its own)."""
        if arm in self.baseline_runs or self.cfg.selection.order != "none":
            return self.w / "curated" / arm / "ordered"
        return self.selected(arm)

    def final_ckpt(self, arm: str) -> Path:
        return self.w / "final" / arm / "ckpt"

    def final_hf(self, arm: str) -> Path:
        return self.w / "final" / arm / "hf"

    def steps(self) -> list[Step]:
        """The table of steps, in order: name, command line, outputs, the steps it reads."""
        s = self._data_steps() + [step for m in self.methods for step in self._annotate(m)]
        for m in self.methods:
            s += self._scorer(m)
        sel = self.cfg.selection
        for m in self.methods:
            s += self._curate(m, str(self.corpus_scores(m)), [f"score-{m}"], sel.method, sel.order)
        if "random" in self.arms:
            first = self.methods[0]
            for i, (_, run) in enumerate(self.runs["random"]):
                rnd = self.w / "curated" / run / "random_pick.npy"
                s.append(
                    Step(
                        f"pick-{run}",
                        outputs=[str(rnd)],
                        after=[f"select-{first}"],
                        func=lambda r=rnd, k=sel.seed + i: self._pick_random(first, r, k),
                        func_id=f"pick-random:{sel.seed + i}",
                    )
                )
                s += self._curate(run, str(rnd), [f"pick-{run}"], "random", "shuffle", seed=sel.seed + i)
        for arm in self.arms:
            for i, (seed, run) in enumerate(self.runs[arm]):
                s += self._arm_run(arm, seed, run, export=i == 0)
        return s

    def _arm_run(self, arm: str, seed: int, run: str, export: bool) -> list[Step]:
        """Pretrain ``run`` (seed ``seed`` of ``arm``) with its target-loss curve, export it (``export``), and
        evaluate it."""
        sel, ckpt = self.cfg.selection, str(self.final_ckpt(run))
        data = run if run in self.baseline_runs else arm  # a scored arm's seeds share its data
        data_step = f"order-{data}" if (data in self.baseline_runs or sel.order != "none") else f"select-{data}"
        curve = {"valid_data": str(self.target), "eval_max_length": self.cfg.evaluate.max_length, "seed": seed}
        pretrain = self._pretrain(
            f"pretrain-{run}",
            self.cfg.pretrain,
            [str(self.train_data(data))],
            ckpt,
            [data_step, "tokenize-target"],
            curve,
        )
        evaluate = {"model": ckpt, "data": self.target}
        s = [pretrain]
        if export:
            s.append(
                Step(
                    f"export-{run}",
                    command("export-hf", (ExportHFConfig, {"checkpoint": ckpt, "out": self.final_hf(run)})),
                    outputs=[str(self.final_hf(run))],
                    after=[f"pretrain-{run}"],
                )
            )
        s.append(
            Step(
                f"evaluate-{run}",
                command("evaluate", (EvaluateConfig, evaluate), (EvaluateConfig, self.cfg.evaluate)),
                outputs=[str(self.w / "logs" / f"evaluate-{run}.stdout")],
                after=[f"pretrain-{run}", "tokenize-target"],
            )
        )
        return s

    def _data_steps(self) -> list[Step]:
        """The tokenizer, the corpus and target datasets, the annotation model, the proxy sample."""
        c, tok = self.cfg, str(self.tokenizer)
        s: list[Step] = []
        if not c.tokenizer.path:
            train_tok = {"inputs": c.data.corpus, "field": c.data.field, "out": tok}
            argv = command("train-tokenizer", (TrainTokenizerConfig, train_tok), (TrainTokenizerConfig, c.tokenizer))
            s.append(Step("train-tokenizer", argv, outputs=[tok], inputs=self.raw_inputs()))
        # --shard none: one output even when the pipeline itself runs inside a Slurm array or torchrun job
        corpus = {"inputs": c.data.corpus, "tokenizer_dir": tok, "out_prefix": self.corpus, "shard": "none"}
        target = {
            "inputs": [c.data.target],
            "field": c.data.target_field,
            "tokenizer_dir": tok,
            "out_prefix": self.target,
        }
        s += [
            Step(
                "tokenize",
                command("tokenize", (TokenizeConfig, corpus), (TokenizeConfig, c.data)),
                outputs=_ds(self.corpus),
                after=self.tok_dep,
                inputs=self.raw_inputs(),
            ),
            Step(
                "tokenize-target",
                command("tokenize-target", (TargetConfig, target)),
                outputs=_ds(self.target),
                after=self.tok_dep,
                inputs=[c.data.target],
            ),
        ]
        if not c.annotation_model.init_from:
            ckpt = str(self.w / "annotation_model" / "ckpt")
            s += [
                self._pretrain("pretrain-annotation-model", c.annotation_model, [str(self.corpus)], ckpt, ["tokenize"]),
                Step(
                    "export-annotation-model",
                    command("export-hf", (ExportHFConfig, {"checkpoint": ckpt, "out": self.annotation_hf})),
                    outputs=[str(self.annotation_hf)],
                    after=["pretrain-annotation-model"],
                ),
            ]
        proxy = {"data": self.corpus, "out": self.proxy}
        s.append(
            Step(
                "sample-proxy",
                command("sample-proxy", (SampleProxyConfig, proxy), (SampleProxyConfig, c.proxy)),
                outputs=[*_ds(self.proxy), f"{self.proxy}.indices.npy"],
                after=["tokenize"],
            )
        )
        return s

    def _annotate(self, m: str) -> list[Step]:
        """annotate-M and its health gate (lqs/health.py), which stops the run before the scorer."""
        an, out = self.cfg.annotate, self.annotate_dir(m)
        train = self.proxy if an.train == "proxy" else self.corpus
        paths = {"model": self.annotation_hf, "train": train, "target": self.target, "proxy": self.proxy}
        annotate = Step(
            f"annotate-{m}",
            [
                *command("annotate", (AnnotateConfig, {**paths, "method": m, "out": out}), (AnnotateConfig, an)),
                *an.extra_args,
            ],
            outputs=[str(out / "raw_scores.npy"), str(out / "scores.npy")],
            after=["tokenize-target", "sample-proxy", *self.model_dep],
            distributed=True,
            resume_flag="--resume",
            state=[str(out)],
        )
        gate = Step(
            f"check-annotate-{m}",
            after=[f"annotate-{m}"],
            func=partial(require_healthy, str(out), f"{m} annotation", allow=an.allow_unhealthy),
            func_id=f"health-gate:{'off' if an.allow_unhealthy else 'on'}",
        )
        return [annotate, gate]

    def _pretrain(
        self, name: str, section, data: list[str], out: str, after: list[str], more: dict | None = None
    ) -> Step:
        """``lqs pretrain`` of ``section``'s settings on ``data`` (``more``: settings that replace the section's)."""
        values = {**section_values(section, PretrainConfig), "data": data, "out": out, "tokenizer": str(self.tokenizer)}
        return Step(
            name,
            [*command("pretrain", (PretrainConfig, {**values, **(more or {})})), *section.extra_args],
            outputs=[out],
            after=[*after, *self.tok_dep],
            distributed=True,
            resume_flag="--resume",
        )

    def _scorer(self, m: str) -> list[Step]:
        """prepare-scorer-data, train-scorer and score for method ``m``."""
        sc, tok, tok_dep, model_dep = self.cfg.scorer, str(self.tokenizer), self.tok_dep, self.model_dep
        data, ckpt = self.w / "scorer" / m / "data", self.w / "scorer" / m / "ckpt"
        prepare = {"proxy": self.proxy, "scores": self.annotate_dir(m) / "scores.npy", "out": data}
        if sc.base == "annotation":
            source, base_dep = {"base": self.annotation_hf}, model_dep
        elif sc.base:
            source, base_dep = {"base": sc.base}, []
        else:
            source, base_dep = {"model_config": sc.model_config, "tokenizer": tok}, tok_dep
        if sc.base in (None, "annotation"):  # the scorer reads the proxy's tokenizer: record it
            prepare |= {"src_tokenizer": tok, "dst_tokenizer": tok}
        out = self.corpus_scores(m).parent
        return [
            Step(
                f"prepare-scorer-data-{m}",
                command("prepare-scorer-data", (PrepareScorerConfig, {**prepare, "valid_num": sc.valid_num})),
                outputs=[str(data)],
                after=[f"annotate-{m}", f"check-annotate-{m}"],
            ),
            Step(
                f"train-scorer-{m}",
                [
                    *command(
                        "train-scorer", (TrainScorerRun, {**source, "data": data, "out": ckpt}), (TrainScorerConfig, sc)
                    ),
                    *sc.extra_args,
                ],
                outputs=[str(ckpt)],
                after=[f"prepare-scorer-data-{m}", *base_dep],
                distributed=True,
                resume_flag="--resume",
            ),
            Step(
                f"score-{m}",
                [
                    *command(
                        "score",
                        (ScoreRun, {"scorer": ckpt, "data": self.corpus, "out": out, "shard": "none"}),
                        (ScoreOptions, self.cfg.score),
                    ),
                    *sc.score_extra_args,
                ],
                outputs=[str(self.corpus_scores(m))],
                after=[f"train-scorer-{m}", "tokenize"],
                distributed=True,
                state=[str(out)],
            ),
        ]

    def select_settings(self, arm: str, scores: str, method: str) -> dict:
        """The ``lqs select`` settings of ``arm`` (``method`` random: the pick file's threshold)."""
        sel = self.cfg.selection
        io = {"data": str(self.corpus), "scores": scores, "out": self.selected(arm)}
        if method == "random":  # the pick file marks exactly the chosen sequences with 1
            return {**io, "method": "threshold", "threshold": 0.5}
        return {**io, "method": method, SELECT_PARAMS[method]: getattr(sel, SELECT_PARAMS[method])}

    def order_settings(self, arm: str, order: str, seed: int | None = None) -> dict:
        """The ``lqs order`` settings of ``arm`` (``order`` is not none): a baseline run's shuffle (seeded by
        ``seed``), or the selection section's order with the ``lqs order`` settings it gives (and its seed
        where the method or the jitter takes one)."""
        sel, selected = self.cfg.selection, self.selected(arm)
        io = {"data": str(selected), "scores": f"{selected}.scores.npy", "method": order, "out": self.train_data(arm)}
        if arm in self.baseline_runs or arm == "random":
            return {**io, "seed": sel.seed if seed is None else seed}
        params = {k: v for k, v in section_values(sel, OrderConfig).items() if v is not None}
        if "seed" in inspect.signature(ORDERINGS[order]).parameters or sel.jitter is not None:
            params["seed"] = sel.seed
        return {**io, **params}

    def _curate(
        self, arm: str, scores: str, after: list[str], method: str, order: str, seed: int | None = None
    ) -> list[Step]:
        selected = self.selected(arm)
        sidecars = [f"{selected}.scores.npy", f"{selected}.indices.npy"]
        steps = [
            Step(
                f"select-{arm}",
                command("select", (SelectConfig, self.select_settings(arm, scores, method))),
                outputs=[*_ds(selected), *sidecars],
                after=[*after, "tokenize"],
            )
        ]
        if order != "none":
            ordered = self.train_data(arm)
            steps.append(
                Step(
                    f"order-{arm}",
                    command("order", (OrderConfig, self.order_settings(arm, order, seed))),
                    outputs=[*_ds(ordered), f"{ordered}.scores.npy", f"{ordered}.indices.npy"],
                    after=[f"select-{arm}"],
                )
            )
        return steps

    def _pick_random(self, first_method: str, out: Path, seed: int) -> None:
        n_keep = len(np.load(f"{self.selected(first_method)}.indices.npy"))
        n = len(np.load(self.corpus_scores(first_method)))
        rng = np.random.default_rng(seed)
        pick = np.zeros(n, dtype=np.float32)
        pick[rng.choice(n, size=n_keep, replace=False)] = 1.0
        os.makedirs(out.parent, exist_ok=True)
        save_npy(out, pick)
