"""Decoder configuration (Mistral / Llama / Qwen2 families) and the named model sizes.

Named sizes live in ``lqs_megatron/configs/<name>.yaml`` (shipped with the package).
Their vocabulary is not fixed: ``--model-config NAME --tokenizer DIR`` takes it, and the
special-token ids, from the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lqs_megatron.errors import LQSError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ARCHITECTURES = ("mistral", "llama", "qwen2")
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
"""Rotary scaling types the decoder computes exactly, and the numbers each one needs."""


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
    rope_scaling: dict | None = None
    """Rotary frequency scaling, HF's form: ``{"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}`` (Llama-3.x) or
    ``{"rope_type": "linear", "factor": F}``; None = plain RoPE."""
    sliding_window: int | None = None
    """Each token attends to itself and the ``sliding_window - 1`` tokens before it (Mistral); None = all."""
    qkv_bias: bool = False
    """Biases on the q/k/v projections (Qwen2; Llama's ``attention_bias``)."""
    o_bias: bool = False
    """Bias on the attention output projection (Llama's ``attention_bias``)."""
    mlp_bias: bool = False
    """Biases on the three MLP projections (Llama's ``mlp_bias``)."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the output head."""
    architecture: str = "mistral"
    """HF family written on export: "mistral", "llama" or "qwen2" (see ``check_family`` for what each allows)."""
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
        if "sliding_window" in self.extra:  # configs written before the field kept it here
            extra = dict(self.extra)
            window = extra.pop("sliding_window")
            self.extra = extra
            if self.sliding_window is None and window and self.architecture == "mistral":
                self.sliding_window = int(window)
        if self.sliding_window is not None and self.sliding_window < 1:
            raise LQSError(f"model config: sliding_window must be >= 1 or null, got {self.sliding_window}")
        check_rope_scaling(self.rope_scaling)
        self.check_family()

    def check_max_length(self, max_length: int, where: str) -> None:
        """Refuse a ``--max-length`` beyond the positions this model was built for (``where`` names the model)."""
        if max_length > self.max_position_embeddings:
            raise LQSError(
                f"--max-length {max_length} exceeds the {self.max_position_embeddings} positions of {where} "
                "(max_position_embeddings); lower --max-length or use a model with a longer context"
            )

    def check_family(self) -> None:
        """The combination must be one its HF family computes (so that the export means the same model)."""
        arch, biases = self.architecture, (self.qkv_bias, self.o_bias, self.mlp_bias)
        bad = None
        if arch == "mistral" and (any(biases) or self.rope_scaling):
            bad = "has no biases and no rope scaling"
        elif arch == "llama" and (self.qkv_bias != self.o_bias or self.sliding_window is not None):
            bad = "has q/k/v/o biases together or none (attention_bias) and no sliding window"
        elif arch == "qwen2" and (
            biases != (True, False, False)
            or self.sliding_window is not None
            or self.head_dim * self.num_heads != self.hidden_size
        ):
            bad = "has q/k/v biases only, no sliding window here and head_dim = hidden_size / num_heads"
        if bad:
            raise LQSError(
                f"model config: architecture {arch!r} {bad} (qkv_bias={self.qkv_bias}, o_bias={self.o_bias}, "
                f"mlp_bias={self.mlp_bias}, rope_scaling={self.rope_scaling}, sliding_window={self.sliding_window})"
            )

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
        attn += (self.num_heads + 2 * self.num_kv_heads) * hd * self.qkv_bias + d * self.o_bias
        layer = attn + 3 * d * f + (2 * f + d) * self.mlp_bias + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d


def check_rope_scaling(rope: dict | None) -> None:
    """Raise :class:`LQSError` unless ``rope`` is None or a complete scaling of :data:`ROPE_SCALING_KEYS`."""
    if rope is None:
        return
    kind = rope.get("rope_type", rope.get("type"))
    if kind not in ROPE_SCALING_KEYS:
        raise LQSError(
            f"rope scaling type {kind!r} is not supported (supported: default, {', '.join(ROPE_SCALING_KEYS)})"
        )
    missing = [k for k in ROPE_SCALING_KEYS[kind] if not isinstance(rope.get(k), (int, float))]
    if missing:
        raise LQSError(f"rope scaling {rope!r} lacks the number(s) {', '.join(missing)}")
    if rope["factor"] <= 0 or (kind == "llama3" and rope["high_freq_factor"] <= rope["low_freq_factor"]):
        raise LQSError(f"rope scaling {rope!r}: factor must be > 0 and high_freq_factor > low_freq_factor")


def available_model_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_model_config(name_or_path: str | os.PathLike, **overrides) -> ModelConfig:
    """A named config (``tiny``, ``160M``, ...), a YAML file path, or a Hugging Face ``config.json`` (or the
    model directory holding one: its architecture, for a model trained from scratch), with field overrides."""
    path = Path(name_or_path)
    if path.is_dir() or path.suffix == ".json":
        from lqs_megatron.models.hf import config_from_hf

        cfg_file = path / "config.json" if path.is_dir() else path
        if not cfg_file.is_file():
            raise LQSError(f"model config {str(name_or_path)!r}: no {cfg_file} (expected a Hugging Face config.json)")
        try:
            hf = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise LQSError(f"{cfg_file}: not valid JSON: {e}") from None
        if not isinstance(hf, dict):
            raise LQSError(f"{cfg_file}: expected a JSON object (a Hugging Face config.json)")
        cfg = config_from_hf(hf, where=str(cfg_file))
        return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise LQSError(
                f"unknown model config {str(name_or_path)!r}; named configs: {', '.join(available_model_configs())}"
            )
    from lqs_megatron.options import read_yaml

    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise LQSError(f"{path}: expected a mapping of model settings, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(data)
