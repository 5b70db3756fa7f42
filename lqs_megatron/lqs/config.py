"""Settings of ``lqs annotate``: the single source of its flags, its pipeline keys and its defaults
(the papers' T, eta, B, K, L). Free of torch, so ``lqs --help`` and the pipeline read it cheaply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.scores import METHODS
from lqs_megatron.options import Deprecated, option

#: --precision -> the compute dtype's name in lqs/annotate.py (fp64: master weights and compute in float64)
PRECISIONS = {"fp32": "float32", "fp64": "float64", "bf16": "bf16"}
BACKENDS = ("auto", "triton", "torch")
REQUIRED = "required"


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
    lr: float = option(0.008, metavar="ETA")
    """SGD learning rate."""
    batch_size: int = option(16, flag="--global-batch-size", metavar="B", deprecated=("--batch-size",))
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
    keep_checkpoints: bool = False
    """Keep the trajectory checkpoints and the state after success."""
    seed: int = 0
    """Seed of torch's generators (the method draws no random numbers)."""
    tp: int = 1
    """Tensor-parallel size; data parallelism is the rest of the torchrun world."""
    backend: str = option("auto", flag="--kernel-backend", choices=BACKENDS)
    """Kernels of the per-example statistics."""
    device: str | None = option(None, choices=("cuda", "cpu"))
    """cuda or cpu (default: cuda when available)."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.interval >= 1, f"--interval must be >= 1, got {self.interval}"),
            (self.steps >= self.interval, f"--steps {self.steps} is smaller than --interval {self.interval} (T < K)"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.batch_size >= 1, f"--global-batch-size must be >= 1, got {self.batch_size}"),
            (self.max_length >= 1, f"--max-length must be >= 1, got {self.max_length}"),
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.micro_batch_size >= 1, f"--micro-batch-size must be >= 1, got {self.micro_batch_size}"),
            (self.proxy_batch_size >= 1, f"--proxy-batch-size must be >= 1, got {self.proxy_batch_size}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision}"),
            (self.proxy_num is None or self.proxy_num >= 1, f"--proxy-num must be >= 1, got {self.proxy_num}"),
            (self.backend in BACKENDS, f"--kernel-backend: unknown backend {self.backend!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LQSError(msg)

    @property
    def dtype(self) -> str:
        """The compute dtype's name: float32, float64 or bf16."""
        return PRECISIONS[self.precision]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.ckpt_dir) if self.ckpt_dir else Path(self.out) / "trajectory"
