"""Settings of ``lqs annotate``: the single source of its flags, its pipeline keys and its defaults
(the papers' T, eta, B, K, L). Free of torch, so ``lqs --help`` and the pipeline read it cheaply.

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.scores import METHODS
from lqs_megatron.options import Deprecated, check_seed, option

#: --precision -> the compute dtype's name in lqs/annotate.py (fp64: master weights and compute in float64)
PRECISIONS = {"fp32": "float32", "fp64": "float64", "bf16": "bf16"}
BACKENDS = ("auto", "triton", "torch")
REQUIRED = "required"
DEFAULT_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
"""The rates tried by ``--lr auto`` (about half a decade apart; lqs/lr_probe.py)."""
DEFAULT_PROBE_STEPS = 10
"""``P``: steps of the replay run at each rate of the ``--lr auto`` probe (at most ``T``)."""


def positive_number(x) -> bool:
    """A finite number above 0 (not a bool): what --lr and the --lr-grid rates must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and math.isfinite(x)


def parse_lr(text: str) -> float | str:
    """``--lr``: a positive number or ``auto``."""
    if str(text).strip() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a positive number or 'auto', got {text!r}") from None


@dataclass
class AnnotateConfig:
    """Arguments of one annotation (the ``lqs annotate`` flags)."""

    help_groups: ClassVar[tuple[str, ...]] = (REQUIRED,)
    model: str = option(metavar="HF_DIR", group=REQUIRED)
    """Annotation model theta_0 (Llama/Mistral/Qwen2 Hugging Face directory)."""
    train: str = option(metavar="PREFIX", group=REQUIRED)
    """Train stream D_train (indexed dataset, used in stored order)."""
    target: str = option(metavar="PREFIX", group=REQUIRED)
    """Target set D_tgt (indexed dataset)."""
    proxy: str = option(metavar="PREFIX", group=REQUIRED)
    """Proxy set D_px to score (indexed dataset)."""
    out: str = option(metavar="DIR", group=REQUIRED)
    """Output directory: raw_scores.npy, scores.npy, annotate.json."""
    steps: int = option(100, metavar="T")
    """SGD steps of the replayed trajectory."""
    lr: float | str = option(0.008, metavar="ETA", parse=parse_lr)
    """SGD learning rate, or auto: the largest rate of --lr-grid whose first --lr-probe-steps replay steps
    still decrease the target loss by at least half the first-order prediction from the smallest rate
    (docs/annotation.md, "Choosing the learning rate"; costs at most grid x P train steps and target
    forwards)."""
    lr_grid: list[float] = option(default_factory=lambda: list(DEFAULT_GRID), metavar="R")
    """Rates tried by --lr auto (space-separated)."""
    lr_probe_steps: int = option(DEFAULT_PROBE_STEPS, metavar="P")
    """Replay steps per rate of --lr auto (at most T)."""
    global_batch_size: int = option(16, deprecated=("--batch-size",))
    """Train examples per SGD step, over all data-parallel ranks."""
    interval: int = option(10, metavar="K")
    """Score at the steps i with i % K == 0."""
    max_length: int = option(1024, metavar="L")
    """Examples are cut to L+1 tokens."""
    method: str = option("lqs", choices=METHODS)
    """The score: lqs (DELT) or pds."""
    micro_batch_size: int = 4
    """Train/target examples per forward+backward, per rank."""
    proxy_batch_size: int = 16
    """Proxy examples per statistics pass, per rank."""
    precision: str = option(
        "fp32",
        choices=tuple(PRECISIONS),
        deprecated=(Deprecated("--dtype", values={v: k for k, v in PRECISIONS.items()}),),
    )
    """fp32; fp64 (master weights and compute in float64); bf16 (autocast on fp32 master weights)."""
    proxy_num: int | None = option(None, metavar="N")
    """Score only the first N proxy examples."""
    ckpt_dir: str | None = option(None, metavar="DIR")
    """Trajectory checkpoints (default: OUT/trajectory)."""
    resume: bool = False
    """Continue a killed run from OUT/state and the checkpoints."""
    allow_changed_settings: bool = False
    """With --resume: start afresh the parts of the killed run that a changed setting or input invalidates
    (each change is logged and recorded in annotate.json); without it a change is refused (OUT/state/settings.json
    holds the run's)."""
    keep_checkpoints: bool = False
    """Keep the trajectory checkpoints and the state after success."""
    seed: int = 0
    """Seed of torch's generators (the method draws no random numbers)."""
    tp: int = 1
    """Tensor-parallel size; data parallelism is the rest of the torchrun world."""
    kernel_backend: str = option("auto", choices=BACKENDS, deprecated=("--backend",))
    """Kernels of the per-example statistics."""
    device: str | None = option(None, choices=("cuda", "cpu"))
    """cuda or cpu (default: cuda when available)."""
    strict: bool = False
    """Exit non-zero (after writing the outputs) when the health check finds the replay unfit: the target loss
    rose or did not fall, the train loss diverged, a loss is not finite, or the --lr auto probe failed
    (annotate.json "health" "ok": false; the other warnings are only logged)."""
    allow_tokenizer_mismatch: bool = False
    """Use --train/--target/--proxy data whose recorded tokenizer differs from --model's anyway (a warning)."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.interval >= 1, f"--interval must be >= 1, got {self.interval}"),
            (self.steps >= self.interval, f"--steps {self.steps} is smaller than --interval {self.interval} (T < K)"),
            (self.lr == "auto" or positive_number(self.lr), f"--lr must be a positive number or auto, got {self.lr}"),
            (
                len(self.lr_grid) > 0 and all(positive_number(r) for r in self.lr_grid),
                f"--lr-grid must hold positive numbers, got {self.lr_grid}",
            ),
            (self.lr_probe_steps >= 1, f"--lr-probe-steps must be >= 1, got {self.lr_probe_steps}"),
            (self.global_batch_size >= 1, f"--global-batch-size must be >= 1, got {self.global_batch_size}"),
            (self.max_length >= 1, f"--max-length must be >= 1, got {self.max_length}"),
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.micro_batch_size >= 1, f"--micro-batch-size must be >= 1, got {self.micro_batch_size}"),
            (self.proxy_batch_size >= 1, f"--proxy-batch-size must be >= 1, got {self.proxy_batch_size}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision}"),
            (self.proxy_num is None or self.proxy_num >= 1, f"--proxy-num must be >= 1, got {self.proxy_num}"),
            (self.kernel_backend in BACKENDS, f"--kernel-backend: unknown backend {self.kernel_backend!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LQSError(msg)
        check_seed(self.seed)

    @property
    def dtype(self) -> str:
        """The compute dtype's name: float32, float64 or bf16."""
        return PRECISIONS[self.precision]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.ckpt_dir) if self.ckpt_dir else Path(self.out) / "trajectory"


@dataclass
class ReportConfig:
    """Arguments of ``lqs report`` (lqs/report.py)."""

    help_groups: ClassVar[tuple[str, ...]] = (REQUIRED,)
    scores: str = option(metavar="S.npy", group=REQUIRED)
    """One score per sequence of --data (.npy)."""
    data: str = option(metavar="PREFIX", group=REQUIRED)
    """The indexed dataset the scores belong to."""
    by: str | None = option(None, metavar="FIELD")
    """Group by this field of PREFIX.meta.jsonl (lqs tokenize --keep-fields)."""
    tokenizer: str | None = option(None, metavar="TOKENIZER_DIR")
    """Decode the examples with this tokenizer (default: the one PREFIX.stats.json records)."""
    losses: str | None = option(None, metavar="L.npy")
    """Each sequence's own loss (default: example_loss.npy beside S)."""
    top: int = option(5, metavar="K")
    """Top and bottom examples shown."""
    chars: int = 300
    """Characters of text per example."""
    out: str | None = option(None, metavar="OUT")
    """Output prefix (default: S without .npy + .report)."""

    def __post_init__(self) -> None:
        if self.top < 0 or self.chars < 10:
            raise LQSError(f"--top must be >= 0 and --chars >= 10, got {self.top} and {self.chars}")

    @property
    def out_prefix(self) -> str:
        return self.out or (self.scores[:-4] if self.scores.endswith(".npy") else self.scores) + ".report"
