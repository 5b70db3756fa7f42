"""Decoder configuration (Mistral / Llama family) and the named model sizes.

Named sizes live in ``lqs_megatron/configs/<name>.yaml`` (shipped with the package).
Their vocabulary is not fixed: ``--model-config NAME --tokenizer DIR`` takes it, and the
special-token ids, from the tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lqs_megatron.errors import LQSError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ARCHITECTURES = ("mistral", "llama")


@dataclass
class ModelConfig:
    """Shape and numerics of the decoder. Field names follow the HF config where one exists."""

    vocab_size: int = 0
    """True vocabulary size (rows the tokenizer can produce). 0 = take it from the tokenizer."""
    hidden_size: int = 64
    """Width of the residual stream."""
    intermediate_size: int = 128
    """Hidden width of the SwiGLU MLP."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None = num_heads."""
    head_dim: int | None = None
    """Per-head width; None = hidden_size // num_heads."""
    max_position_embeddings: int = 4096
    """Longest sequence the rotary tables are built for."""
    rope_theta: float = 10000.0
    """Rotary base frequency."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the output head."""
    architecture: str = "mistral"
    """HF family written on export: "mistral" or "llama" (identical maths here)."""
    initializer_range: float = 0.02
    """Std of the normal init; output projections use std / sqrt(2 * num_layers)."""
    bos_token_id: int | None = None
    """Special ids, kept for the HF export."""
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)
    """Free-form metadata (e.g. the tokenizer path); not used by the maths."""

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise LQSError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise LQSError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise LQSError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.architecture not in ARCHITECTURES:
            raise LQSError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise LQSError(f"model config: {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LQSError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**d)

    def num_parameters(self, vocab_size: int | None = None) -> int:
        """Parameter count of the unpadded model (embeddings included)."""
        v = vocab_size if vocab_size is not None else self.vocab_size
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2
        layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d


def available_model_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_model_config(name_or_path: str | os.PathLike, **overrides) -> ModelConfig:
    """A named config (``tiny``, ``160M``, ...) or a YAML file path, with field overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise LQSError(
                f"unknown model config {str(name_or_path)!r}; named configs: {', '.join(available_model_configs())}"
            )
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(data)
