"""The pipeline configuration: one YAML file naming every path and hyper-parameter.

Relative paths in the YAML are resolved against the YAML file's directory (``workdir``
too), so a config and its data can move together. Every section is a dataclass with a
docstring per field; unknown keys are errors (a typo must not silently use a default).
The resolved config is saved as ``WORKDIR/pipeline.yaml`` beside the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lqs_megatron.errors import LQSError


@dataclass
class DataSection:
    corpus: list[str] = field(default_factory=list)
    """Raw jsonl corpus files (plain, .gz, .zst) or globs."""
    field: str = "text"
    """The text field of a corpus line."""
    mode: str = "document"
    """Tokenization mode: ``document`` (one sequence per document) or ``chunk``."""
    max_length: int | None = None
    """Truncation (document mode) or chunk length (chunk mode, e.g. 1025)."""
    target: str = ""
    """Target conversations (LIMA-style jsonl)."""
    target_field: str = "conversations"
    """The conversation field of a target line."""
    labels: str | None = None
    """Optional per-document labels (``.npy`` of 1 = clean / 0 = degraded, or a jsonl with a
    ``label`` field of "clean"/other), aligned with the corpus, to report score AUCs."""
    workers: int = 2
    """Tokenizer worker processes."""


@dataclass
class TokenizerSection:
    path: str | None = None
    """An existing tokenizer directory; None = train one on the corpus."""
    vocab_size: int = 2048
    """Vocabulary size when training one."""


@dataclass
class ModelTraining:
    """How one model is trained by ``lqs pretrain``."""

    model_config: str = "tiny"
    """Named model config (``lqs_megatron/configs``) or a YAML path."""
    steps: int = 100
    lr: float = 1e-3
    global_batch_size: int = 16
    max_length: int = 128
    seed: int = 1
    extra_args: list[str] = field(default_factory=list)
    """More ``lqs pretrain`` flags, verbatim."""


@dataclass
class AnnotationModelSection(ModelTraining):
    init_from: str | None = None
    """An HF directory to use as the annotation model; None = pretrain one on the corpus."""


@dataclass
class ProxySection:
    num: int = 1000
    """Proxy examples to sample from the corpus (the ones that get LQS scores)."""
    seed: int = 1


@dataclass
class AnnotateSection:
    methods: list[str] = field(default_factory=lambda: ["lqs", "pds"])
    """Which scores to compute; each becomes one arm of the comparison."""
    steps: int = 100
    """T, the replayed training steps (papers: 100)."""
    lr: float | str = "auto"
    """eta, or ``auto`` (the default): chosen per run by ``lqs annotate --lr auto``'s probe (docs/annotation.md;
    docs/quality.md: on real text it never did worse than a fixed rate and adapts to the annotation model).
    The papers use 0.008."""
    batch_size: int = 16
    """B, the global batch of the replayed trajectory (papers: 16)."""
    interval: int = 10
    """K, the scoring interval (papers: 10)."""
    max_length: int = 1024
    """L (papers: 1024)."""
    train: str = "proxy"
    """The trajectory's training data: ``proxy`` (as PDS/DELT) or ``corpus``."""
    allow_unhealthy: bool = False
    """Train the scorer even when annotate.json's health check warned (default: the pipeline stops)."""
    extra_args: list[str] = field(default_factory=list)


@dataclass
class ScorerSection:
    base: str | None = "annotation"
    """Backbone: ``annotation`` (the annotation model), an HF directory, or None for
    ``model_config`` with random init."""
    model_config: str = "tiny"
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 512
    """Global batch (sequences per optimizer step); keep epochs * N / batch_size in the hundreds
    of steps at least (the papers: 512 over 163,840 proxy examples)."""
    warmup: int = 10
    """Linear warmup steps of the scorer's learning rate."""
    valid_num: int = 100
    extra_args: list[str] = field(default_factory=list)
    score_extra_args: list[str] = field(default_factory=list)


@dataclass
class SelectionSection:
    method: str = "top-r"
    """``top-r`` | ``threshold`` | ``top-k``."""
    r: float = 0.5
    threshold: float | None = None
    k: int | None = None
    order: str = "folding"
    """Ordering of the selected data: ``folding`` | ``sorting`` | ``shuffle`` | ``none``."""
    layers: int = 3
    """Folding layers."""
    baseline: str = "random"
    """The comparison arm: ``random`` (a seeded random selection of the same size, shuffled)
    or ``none``."""
    seed: int = 1


@dataclass
class EvaluateSection:
    max_length: int = 1024


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
    selection: SelectionSection = field(default_factory=SelectionSection)
    pretrain: ModelTraining = field(default_factory=ModelTraining)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    launch: LaunchSection = field(default_factory=LaunchSection)

    def __post_init__(self) -> None:
        if self.data.mode not in ("document", "chunk"):
            raise LQSError(f"data.mode must be document or chunk, got {self.data.mode!r}")
        for m in self.annotate.methods:
            if m not in ("lqs", "pds"):
                raise LQSError(f"annotate.methods: unknown method {m!r} (lqs, pds)")
        if not self.annotate.methods:
            raise LQSError("annotate.methods is empty")
        lr = self.annotate.lr
        if lr != "auto" and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise LQSError(f"annotate.lr must be a positive number or auto, got {lr!r}")
        if self.annotate.train not in ("proxy", "corpus"):
            raise LQSError(f"annotate.train must be proxy or corpus, got {self.annotate.train!r}")
        if self.selection.method not in ("top-r", "threshold", "top-k"):
            raise LQSError(f"selection.method must be top-r, threshold or top-k, got {self.selection.method!r}")
        if self.selection.order not in ("folding", "sorting", "shuffle", "none"):
            raise LQSError(f"selection.order must be folding, sorting, shuffle or none, got {self.selection.order!r}")
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


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise LQSError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LQSError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kw = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kw[name] = _build(sub, value or {}, f"{where}.{name}")
        else:
            kw[name] = value
    try:
        return cls(**kw)
    except TypeError as e:
        raise LQSError(f"{where}: {e}") from None


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None or path == "" or os.path.isabs(path):
        return path
    return str((base / path).resolve()) if not any(c in path for c in "*?[") else str(base / path)


def config_from_dict(data: dict, base_dir: str | os.PathLike = ".", where: str = "config") -> PipelineConfig:
    """Build and validate a config; relative paths resolve against ``base_dir``."""
    cfg = _build(PipelineConfig, data or {}, where)
    base = Path(base_dir).resolve()
    cfg.workdir = _resolve(cfg.workdir, base)
    cfg.data.corpus = [_resolve(p, base) for p in cfg.data.corpus]
    cfg.data.target = _resolve(cfg.data.target, base)
    cfg.data.labels = _resolve(cfg.data.labels, base)
    cfg.tokenizer.path = _resolve(cfg.tokenizer.path, base)
    cfg.annotation_model.init_from = _resolve(cfg.annotation_model.init_from, base)
    if cfg.scorer.base not in (None, "annotation"):
        cfg.scorer.base = _resolve(cfg.scorer.base, base)
    return cfg


def load_config(path: str | os.PathLike) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise LQSError(f"pipeline config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LQSError(f"{path}: invalid YAML: {e}") from None
    return config_from_dict(data or {}, path.parent, where=str(path))


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
