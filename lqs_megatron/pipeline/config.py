"""The pipeline configuration: one YAML file naming every path and hyper-parameter.

Relative paths in the YAML are resolved against the YAML file's directory (``workdir``
too), so a config and its data can move together. A section that configures one step is
generated from that step's dataclass (:func:`lqs_megatron.options.derive`): its keys are the
step's settings (the flag without dashes: ``annotate: {micro_batch_size: 8}`` is
``lqs annotate --micro-batch-size 8``), with the step's types, defaults and docstrings, less
the paths the plan fills in, plus a few keys of the pipeline's own. Unknown keys and values
of the wrong type are errors naming the file and key, before any step runs. The resolved
config is saved as ``WORKDIR/pipeline.yaml`` beside the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lqs_megatron.curate.config import ORDER_METHODS, ORDER_PARAMS, SELECT_METHODS, OrderConfig, SelectConfig
from lqs_megatron.data.config import SampleProxyConfig, TrainTokenizerConfig
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.config import METHODS, AnnotateConfig, positive_number
from lqs_megatron.options import (
    check_mapping,
    derive,
    flag_name,
    nested_type,
    option,
    read_yaml,
    section_values,
    settings,
)
from lqs_megatron.scorer.config import PrepareScorerConfig, ScoreOptions, TrainScorerConfig
from lqs_megatron.training.config import EvaluateConfig, PretrainConfig


def _key(name: str, tp, default=dataclasses.MISSING, doc: str = "", factory=dataclasses.MISSING):
    """An ``extra`` setting of a derived section: ``(name, type, field)``."""
    return (name, tp, field(default=default, default_factory=factory, metadata={"doc": doc}))


_EXTRA_ARGS = "More flags of the step's command, verbatim (appended last)."

DataSection = derive(
    "DataSection",
    TokenizeConfig,
    only=("field", "mode", "max_length", "workers", "keep_fields"),
    extra=(
        _key(
            "corpus",
            list[str],
            factory=list,
            doc="Raw corpus files (jsonl, plain or compressed; parquet; arrow), directories or globs.",
        ),
        _key("target", str, "", doc="Target conversations (LIMA-style; jsonl, parquet or arrow)."),
        _key("target_field", str, "conversations", doc="The conversation field of a target line."),
        _key(
            "labels",
            str | None,
            None,
            doc="Optional per-document labels (.npy of 1 = clean / 0 = degraded, or a jsonl with a label field "
            'of "clean"/other), aligned with the corpus, to report score AUCs.',
        ),
    ),
    doc="The corpus (``lqs tokenize``) and the target set (``lqs tokenize-target``).",
)

TokenizerSection = derive(
    "TokenizerSection",
    TrainTokenizerConfig,
    only=("vocab_size",),
    defaults={"vocab_size": 2048},
    extra=(_key("path", str | None, None, doc="An existing tokenizer directory; none: train one on the corpus."),),
    doc="The tokenizer: an existing one, or ``lqs train-tokenizer`` on the corpus.",
)

# the plan sets the data, the output, the tokenizer and --resume; --stop-after is a test hook
_PRETRAIN_OWN = (
    "data",
    "out",
    "tokenizer",
    "init_from",
    "resume",
    "stop_after",
    "valid_data",
    "eval_max_length",
    "data_weights",
)
_PRETRAIN_DEFAULTS = {"model_config": "tiny", "steps": 100, "lr": 1e-3, "global_batch_size": 16, "max_length": 128}

ModelTraining = derive(
    "ModelTraining",
    PretrainConfig,
    exclude=_PRETRAIN_OWN,
    # eval_interval: the arms' target-loss curve (the token efficiency of the table), 10 points at the default steps
    defaults={**_PRETRAIN_DEFAULTS, "seed": 1, "eval_interval": 10},
    extra=(
        _key(
            "seeds",
            list[int],
            factory=list,
            doc="Pretrain every arm once per seed (``lqs pretrain --seed``, the initial weights; default: [seed]); "
            "the table gives each arm's mean and std over them and its difference from the baseline seed by seed.",
        ),
        _key(
            "baseline_seeds",
            list[int],
            factory=list,
            doc="The random baseline's seeds (default: seeds): its run i also picks and shuffles with "
            "selection.seed + i; more seeds than the arms' measure the noise an arm's difference is judged by.",
        ),
        _key("extra_args", list[str], factory=list, doc=_EXTRA_ARGS),
    ),
    doc="How one model is trained by ``lqs pretrain``; for the arms, with the target loss every "
    "``eval_interval`` steps (``--valid-data`` the target set, ``--eval-max-length`` evaluate.max_length).",
)

AnnotationModelSection = derive(
    "AnnotationModelSection",
    PretrainConfig,
    exclude=_PRETRAIN_OWN,
    defaults={**_PRETRAIN_DEFAULTS, "seed": 1},
    extra=(
        _key("init_from", str | None, None, doc="An HF directory to use as the annotation model; none: pretrain one."),
        _key("extra_args", list[str], factory=list, doc=_EXTRA_ARGS),
    ),
    doc="The annotation model: an HF directory, or ``lqs pretrain`` on the corpus then ``lqs export-hf``.",
)

ProxySection = derive(
    "ProxySection",
    SampleProxyConfig,
    only=("num", "seed"),
    defaults={"num": 1000, "seed": 1},
    doc="The proxy set (``lqs sample-proxy``): the examples that get LQS scores.",
)

AnnotateSection = derive(
    "AnnotateSection",
    AnnotateConfig,
    exclude=("model", "train", "target", "proxy", "out", "method", "resume", "ckpt_dir", "strict"),
    # lr auto: chosen per run by `lqs annotate --lr auto`'s probe (docs/quality.md: on real text it never did
    # worse than a fixed rate and adapts to the annotation model); the papers use 0.008
    defaults={"lr": "auto"},
    extra=(
        _key("methods", list[str], factory=lambda: list(METHODS), doc="Which scores; each is one arm."),
        _key("train", str, "proxy", doc="The trajectory's data: proxy (as PDS/DELT) or corpus."),
        _key(
            "allow_unhealthy",
            bool,
            False,
            doc="Train the scorer even when annotate.json's health check warned (default: the pipeline stops).",
        ),
        _key("extra_args", list[str], factory=list, doc=_EXTRA_ARGS),
    ),
    doc="``lqs annotate``, once per method.",
)

ScorerSection = derive(
    "ScorerSection",
    TrainScorerConfig,
    extra=(
        _key(
            "base",
            str | None,
            "annotation",
            doc="Backbone: annotation (the annotation model), an HF directory, or none for model_config.",
        ),
        _key("model_config", str, "tiny", doc="Named model config of a random-init backbone (base: none)."),
        _key("valid_num", int, 100, doc="Validation sequences of ``lqs prepare-scorer-data``."),
        _key("extra_args", list[str], factory=list, doc=_EXTRA_ARGS),
        _key("score_extra_args", list[str], factory=list, doc="More flags of ``lqs score``, verbatim."),
    ),
    doc="``lqs prepare-scorer-data`` and ``lqs train-scorer``, once per method; keep epochs * N / "
    "global_batch_size in the hundreds of steps at least (the papers: 512 over 163,840 proxy examples).",
)

ScoreSection = derive("ScoreSection", ScoreOptions, doc="``lqs score`` of the corpus, once per method.")

EvaluateSection = derive(
    "EvaluateSection",
    EvaluateConfig,
    exclude=("model", "data"),
    defaults={"max_length": 1024},
    doc="``lqs evaluate`` of each arm's model on the target set.",
)


#: the ``lqs order`` settings a selection section takes (its seed is the section's own: it also seeds the baseline)
ORDER_KEYS = (*(n for n in ORDER_PARAMS if n != "seed"), "jitter")

SelectionSection = derive(
    "SelectionSection",
    OrderConfig,
    only=ORDER_KEYS,
    extra=(
        _key("method", str, "top-r", doc="``top-r`` | ``threshold`` | ``top-k``."),
        _key("r", float, 0.5, doc="top-r: the fraction to keep."),
        _key("threshold", float | None, None, doc="threshold: keep scores >= this."),
        _key("k", int | None, None, doc="top-k: the number to keep."),
        _key(
            "order",
            str,
            "saw",
            doc=f"Ordering of the selected data: a method of ``lqs order`` ({', '.join(ORDER_METHODS)}) or "
            "``none``; its settings are the keys above, as ``lqs order`` takes them. Default ``saw``: it beat "
            "folding and a plain shuffle of the same selection on every seed of docs/quality.md's benchmark.",
        ),
        _key(
            "baseline",
            str,
            "random",
            doc="The comparison arm: ``random`` (a seeded random selection of the same size, shuffled) or ``none``.",
        ),
        _key(
            "seed",
            int,
            1,
            doc="Seeds the random baseline's pick and shuffle, and the order's (shuffle, segment, jitter).",
        ),
        _key(
            "view",
            bool,
            False,
            doc="Write the selections and orderings as views (``lqs select/order --view``: indices, no copy of the "
            "tokens); pretraining reads them as it reads datasets.",
        ),
    ),
    doc="``lqs select`` and ``lqs order`` of each arm (and the random baseline).",
)


@dataclass
class LaunchSection:
    """How the distributed steps run. ``lqs pipeline`` drives one node; for several nodes run
    the steps one by one with the launch scripts of ``scripts/`` (docs/pipeline.md)."""

    nproc_per_node: int = 1
    """Processes (GPUs) for the distributed steps (pretrain, annotate, train-scorer, score);
    > 1 runs them under ``torchrun --standalone``."""
    torchrun_args: list[str] = field(default_factory=list)
    """More torchrun flags, verbatim."""


@dataclass
class PipelineConfig:
    workdir: str = "runs/pipeline"
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    annotation_model: AnnotationModelSection = field(default_factory=AnnotationModelSection)
    proxy: ProxySection = field(default_factory=ProxySection)
    annotate: AnnotateSection = field(default_factory=AnnotateSection)
    scorer: ScorerSection = field(default_factory=ScorerSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    selection: SelectionSection = field(default_factory=SelectionSection)
    pretrain: ModelTraining = field(default_factory=ModelTraining)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    launch: LaunchSection = field(default_factory=LaunchSection)

    def __post_init__(self) -> None:
        if self.data.mode not in ("document", "chunk"):
            raise LQSError(f"data.mode must be document or chunk, got {self.data.mode!r}")
        for m in self.annotate.methods:
            if m not in METHODS:
                raise LQSError(f"annotate.methods: unknown method {m!r} ({', '.join(METHODS)})")
        if not self.annotate.methods:
            raise LQSError("annotate.methods is empty")
        lr = self.annotate.lr
        if lr != "auto" and not positive_number(lr):
            raise LQSError(f"annotate.lr must be a positive number or auto, got {lr!r}")
        if self.annotate.train not in ("proxy", "corpus"):
            raise LQSError(f"annotate.train must be proxy or corpus, got {self.annotate.train!r}")
        if self.selection.method not in SELECT_METHODS:
            raise LQSError(f"selection.method must be top-r, threshold or top-k, got {self.selection.method!r}")
        if self.selection.order not in (*ORDER_METHODS, "none"):
            raise LQSError(
                f"selection.order must be one of {', '.join(ORDER_METHODS)} or none, got {self.selection.order!r}"
            )
        for key in ("seeds", "baseline_seeds"):
            seeds = getattr(self.pretrain, key)
            if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise LQSError(f"pretrain.{key} must be distinct seeds >= 0, got {seeds}")
        if self.selection.baseline not in ("random", "none"):
            raise LQSError(f"selection.baseline must be random or none, got {self.selection.baseline!r}")
        if self.selection.method == "threshold" and self.selection.threshold is None:
            raise LQSError("selection.method threshold needs selection.threshold")
        if self.selection.method == "top-k" and self.selection.k is None:
            raise LQSError("selection.method top-k needs selection.k")
        if not self.data.corpus:
            raise LQSError("data.corpus names no file")
        if not self.data.target:
            raise LQSError("data.target names no file")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict):
    """``cls`` from a mapping already checked by :func:`check_mapping` (sections built recursively)."""
    kw = {}
    for f in settings(cls):
        if f.name in data:
            sub = nested_type(f)
            kw[f.name] = _build(sub, data[f.name]) if sub is not None else data[f.name]
    return cls(**kw)


def _placeholder(f: dataclasses.Field, step) -> object:
    from lqs_megatron.options import kind_of

    kind = kind_of(step, f.name)
    value = {int: 1, float: 1.0, bool: False}.get(kind.base, "-")
    return [value] if kind.is_list else value


def _blame(where: str, section: str, step, error: LQSError) -> LQSError:
    """``error`` of ``step`` (``--flag ...``) as ``FILE: section.key: --flag ...`` (the key of the flag it
    starts with), or ``FILE: section: ...``."""
    msg = str(error)
    keys = {flag_name(g): g.name for g in settings(step)}
    flag = msg.split()[0].rstrip(":,") if msg else ""
    key = f"{section}.{keys[flag]}" if flag in keys else section
    return LQSError(f"{where}: {key}: {msg}")


def check_steps(cfg: PipelineConfig, where: str) -> None:
    """Run each step's own checks (ranges, combinations: its dataclass) on the values its section gives
    it, with placeholder paths, so that a bad value fails now, naming the file and the key, not when the
    step runs. The selection's steps get their settings from the plan, as when they run."""
    from lqs_megatron.pipeline.plan import Plan  # the plan imports this module

    checks = []
    for f in settings(PipelineConfig):
        section = getattr(cfg, f.name)
        step = getattr(type(section), "step", None)
        if step is not None:
            checks.append((f.name, step, section_values(section)))
    checks.append(("scorer", PrepareScorerConfig, {"valid_num": cfg.scorer.valid_num}))  # the plan passes it on
    plan, sel = Plan(cfg), cfg.selection
    arms = [(plan.methods[0], sel.method, sel.order)]
    if "random" in plan.arms:  # the baseline: its pick (seeded by selection.seed), then a shuffle
        arms.append(("random", "random", "shuffle"))
    for arm, method, order in arms:
        checks.append(("selection", SelectConfig, plan.select_settings(arm, "-", method)))
        if order != "none":
            checks.append(("selection", OrderConfig, plan.order_settings(arm, order)))
    for name, step, values in checks:
        for g in settings(step):
            if g.name not in values and g.default is dataclasses.MISSING and g.default_factory is dataclasses.MISSING:
                values[g.name] = _placeholder(g, step)
        try:
            step(**values)
        except LQSError as e:
            raise _blame(where, name, step, e) from None


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None or path == "" or os.path.isabs(path):
        return path
    return str((base / path).resolve()) if not any(c in path for c in "*?[") else str(base / path)


def config_from_dict(data: dict, base_dir: str | os.PathLike = ".", where: str = "config") -> PipelineConfig:
    """Build and validate a config (every key, type and step check, before anything runs);
    relative paths resolve against ``base_dir``; errors name ``where`` and the key."""
    try:
        cfg = _build(PipelineConfig, check_mapping(PipelineConfig, data or {}, where))
    except TypeError as e:  # a section that misses a required key
        raise LQSError(f"{where}: {e}") from None
    check_steps(cfg, where)
    base = Path(base_dir).resolve()
    cfg.workdir = _resolve(cfg.workdir, base)
    cfg.data.corpus = [_resolve(p, base) for p in cfg.data.corpus]
    cfg.data.target = _resolve(cfg.data.target, base)
    cfg.data.labels = _resolve(cfg.data.labels, base)
    cfg.tokenizer.path = _resolve(cfg.tokenizer.path, base)
    cfg.annotation_model.init_from = _resolve(cfg.annotation_model.init_from, base)
    if cfg.scorer.base not in (None, "annotation"):
        cfg.scorer.base = _resolve(cfg.scorer.base, base)
    for section in (cfg.annotation_model, cfg.pretrain, cfg.scorer):  # a YAML or HF config path, or a name
        if section.model_config and (base / section.model_config).exists():
            section.model_config = str((base / section.model_config).resolve())
    for section in (cfg.annotation_model, cfg.pretrain):  # --online-select's target dataset prefix
        section.target = _resolve(section.target, base)
    return cfg


def load_config(path: str | os.PathLike) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise LQSError(f"pipeline config {str(path)!r} does not exist")
    data = read_yaml(path)
    return config_from_dict(data or {}, path.parent, where=str(path))


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


@dataclass
class PipelineCommand:
    """Settings of ``lqs pipeline``."""

    config: str = option(metavar="FILE.yaml")
    """Pipeline YAML (relative paths resolve against its directory)."""
    workdir: str | None = option(None, metavar="DIR")
    """Override the config's workdir."""


@dataclass
class DemoCommand:
    """Settings of ``lqs demo``."""

    workdir: str = option("lqs_demo", metavar="DIR")
    """Where everything is written (default: ./lqs_demo)."""
    config: str | None = option(None, metavar="FILE.yaml")
    """A YAML whose keys override the embedded demo config."""
