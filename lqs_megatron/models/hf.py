"""Hugging Face in and out: config conversion, the state-dict key mapping, loading and saving.

Supported: ``MistralForCausalLM`` and ``LlamaForCausalLM`` directories (safetensors, single or
index-sharded, or ``pytorch_model.bin``), loaded from local paths only. Anything else, or a
feature this decoder does not implement (rope scaling, biases, non-SiLU activations), is a
clear :class:`LQSError` rather than a silently different model.

Vocabulary padding: our embedding/head may hold ``padded_vocab_size >= vocab_size`` rows
(tensor parallelism). Import pads with zeros; export drops the padded rows and writes the
true ``vocab_size`` into ``config.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.utils.atomic import atomic_dir

_LAYER_KEYS = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP_KEYS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")
_OUR_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight$")
_ARCH_CLASS = {"mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM"}


def hf_key_to_ours(key: str) -> str | None:
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    m = _HF_LAYER.match(key)
    if m and m.group(2) in _LAYER_KEYS:
        return f"layers.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}.weight"
    return None


def our_key_to_hf(key: str) -> str:
    inv_top = {v: k for k, v in _TOP_KEYS.items()}
    if key in inv_top:
        return inv_top[key]
    m = _OUR_LAYER.match(key)
    inv = {v: k for k, v in _LAYER_KEYS.items()}
    if not m or m.group(2) not in inv:
        raise KeyError(f"no Hugging Face name for parameter {key!r}")
    return f"model.layers.{m.group(1)}.{inv[m.group(2)]}.weight"


def read_hf_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise LQSError(f"model directory {str(path)!r} does not exist (a local HF directory is required)")
    if not cfg_file.is_file():
        raise LQSError(f"{path}: no config.json; not a Hugging Face model directory")
    with open(cfg_file) as f:
        return json.load(f)


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """Our :class:`ModelConfig` from an HF config dict; unsupported features are errors."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type not in _ARCH_CLASS:
        kind = f"{model_type!r} ({', '.join(archs)})" if archs else repr(model_type)
        raise LQSError(
            f"{where}: unsupported architecture {kind}; supported causal LMs: MistralForCausalLM, LlamaForCausalLM"
        )
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise LQSError(f"{where}: {', '.join(archs)} is not a causal LM (expected *ForCausalLM)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise LQSError(f"{where}: rope scaling {rope!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise LQSError(f"{where}: attention/MLP biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise LQSError(f"{where}: activation {hf.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
    if hf.get("pretraining_tp", 1) != 1:
        raise LQSError(f"{where}: pretraining_tp != 1 is not supported")

    def _id(name):
        v = hf.get(name)
        return v[0] if isinstance(v, list) else v

    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rope_theta=float(theta),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        architecture=model_type,
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=_id("bos_token_id"),
        eos_token_id=_id("eos_token_id"),
        pad_token_id=_id("pad_token_id"),
        extra={"sliding_window": hf.get("sliding_window")} if hf.get("sliding_window") else {},
    )


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """A ``transformers`` config object (MistralConfig / LlamaConfig) for ``cfg``."""
    import transformers  # noqa: PLC0415

    cls = transformers.MistralConfig if cfg.architecture == "mistral" else transformers.LlamaConfig
    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        hidden_act="silu",
    )
    if cfg.architecture == "mistral":
        kw["sliding_window"] = cfg.extra.get("sliding_window")
    hf = cls(**kw)
    hf.architectures = [_ARCH_CLASS[cfg.architecture]]
    hf.dtype = dtype
    return hf


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory (safetensors single/sharded, or pytorch_model.bin)."""
    from safetensors.torch import load_file  # noqa: PLC0415

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(path / f))
        return out
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise LQSError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, padded_vocab_size: int | None = None):
    """Map HF tensors to our names, padding the vocabulary rows with zeros if asked."""
    out, unexpected = {}, []
    for k, v in hf_sd.items():
        ours = hf_key_to_ours(k)
        if ours is None:
            if not k.endswith("rotary_emb.inv_freq"):
                unexpected.append(k)
            continue
        out[ours] = v
    if unexpected:
        raise LQSError(f"unexpected tensors in the HF checkpoint: {', '.join(unexpected[:5])}")
    if cfg.tie_word_embeddings:
        out.pop("output.weight", None)
    pv = padded_vocab_size or cfg.vocab_size
    for name in ("tok_embeddings.weight", "output.weight"):
        if name in out and out[name].shape[0] != pv:
            w = out[name]
            if w.shape[0] > pv:
                raise LQSError(f"{name} has {w.shape[0]} rows, more than the vocabulary {pv}")
            out[name] = torch.cat([w, w.new_zeros(pv - w.shape[0], w.shape[1])])
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our (merged, unsharded) state dict to HF names, dropping vocabulary padding rows."""
    out = {}
    for k, v in sd.items():
        if cfg.tie_word_embeddings and k == "output.weight":
            continue
        if k in ("tok_embeddings.weight", "output.weight"):
            v = v[: cfg.vocab_size]
        out[our_key_to_hf(k)] = v.contiguous()
    return out


def load_hf_model(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, padded_vocab_size: int | None = None
) -> Decoder:
    """An HF Mistral/Llama directory as our :class:`Decoder` (unsharded, on the CPU)."""
    cfg = config_from_hf(read_hf_config(path), where=f"{path}/config.json")
    model = Decoder(cfg, padded_vocab_size)
    sd = state_dict_from_hf(read_hf_state_dict(path), cfg, model.padded_vocab_size)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise LQSError(
            f"{path}: checkpoint does not match its config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(dtype)


def save_hf_model(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Write an HF directory (config.json, model.safetensors, tokenizer files if given), atomically."""
    from safetensors.torch import save_file  # noqa: PLC0415

    hf_sd = state_dict_to_hf(state_dict, cfg)
    if dtype is not None:
        hf_sd = {k: v.to(dtype) for k, v in hf_sd.items()}
    dt = next(iter(hf_sd.values())).dtype
    with atomic_dir(out_dir) as tmp:
        config_to_hf(cfg, dt).save_pretrained(tmp)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in hf_sd.items()},
            tmp / "model.safetensors",
            metadata={"format": "pt"},
        )
        if tokenizer_dir is not None:
            from lqs_megatron.data.tokenizer import load_tokenizer  # noqa: PLC0415

            load_tokenizer(str(tokenizer_dir), require_eos=False).save_pretrained(str(tmp))
    return Path(out_dir)
