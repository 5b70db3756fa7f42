"""Hugging Face in and out: config conversion, the state-dict key mapping, loading and saving.

Supported: ``MistralForCausalLM`` (with its sliding window), ``LlamaForCausalLM`` (Llama-2/3.x:
``llama3`` or ``linear`` rope scaling, ``attention_bias``, ``mlp_bias``, tied embeddings as in
SmolLM2 / Llama-3.2) and ``Qwen2ForCausalLM`` (Qwen2 / Qwen2.5: q/k/v biases, tied embeddings)
directories (safetensors, single or index-sharded, or ``pytorch_model.bin``), loaded from local
paths only. Anything else, or a config field this decoder does not compute exactly (another
rope scaling, partial rotary, Qwen2's ``use_sliding_window``, dropout, quantized weights,
non-SiLU activations), is a clear :class:`LQSError` rather than a silently different model.

Export writes a ``config.json`` that transformers 4.x (the floor in ``pyproject.toml``) and 5.x
read as the same model: both the 4.x fields (``rope_theta``, ``rope_scaling``, ``torch_dtype``)
and the 5.x ones (``rope_parameters``, ``dtype``); a ``generation_config.json``; and the
tokenizer with a ``tokenizer_class`` 4.x knows and its ``tokenizer.model`` when it has one.

Vocabulary padding: our embedding/head may hold ``padded_vocab_size >= vocab_size`` rows
(tensor parallelism). Import pads with zeros; export drops the padded rows and writes the
true ``vocab_size`` into ``config.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OUR_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")
_ARCH_CLASS = {"mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED = ", ".join(_ARCH_CLASS.values())


def hf_key_to_ours(key: str) -> str | None:
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    m = _HF_LAYER.match(key)
    if m and m.group(2) in _LAYER_KEYS:
        return f"layers.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}.{m.group(3)}"
    return None


def our_key_to_hf(key: str) -> str:
    inv_top = {v: k for k, v in _TOP_KEYS.items()}
    if key in inv_top:
        return inv_top[key]
    m = _OUR_LAYER.match(key)
    inv = {v: k for k, v in _LAYER_KEYS.items()}
    if not m or m.group(2) not in inv:
        raise KeyError(f"no Hugging Face name for parameter {key!r}")
    return f"model.layers.{m.group(1)}.{inv[m.group(2)]}.{m.group(3)}"


def read_hf_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise LQSError(f"model directory {str(path)!r} does not exist (a local HF directory is required)")
    if not cfg_file.is_file():
        raise LQSError(f"{path}: no config.json; not a Hugging Face model directory")
    return _read_json(cfg_file)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LQSError(f"{path}: not valid JSON ({e}); truncated or corrupt? copy it again") from None
    if not isinstance(data, dict):
        raise LQSError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _rope_from_hf(hf: dict, where: str) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling or None)`` from either 4.x fields or 5.x ``rope_parameters``."""
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise LQSError(f"{where}: rope_parameters {params!r} is not an object")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise LQSError(f"{where}: per-layer-type rope_parameters are not supported")
    rope = dict(params or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise LQSError(f"{where}: partial_rotary_factor {partial} is not supported (rotary over the whole head only)")
    kind = rope.get("rope_type", "default")
    if kind in (None, "default"):
        return float(theta), None
    if hf.get("model_type") == "mistral":  # transformers 4.x's Mistral ignores rope scaling, 5.x applies it
        raise LQSError(f"{where}: rope scaling {rope!r} on a Mistral model is not supported")
    from lqs_megatron.models.config import ROPE_SCALING_KEYS, check_rope_scaling

    try:
        check_rope_scaling(rope)
    except LQSError as e:
        raise LQSError(f"{where}: {e}") from None
    return float(theta), {"rope_type": kind, **{k: rope[k] for k in ROPE_SCALING_KEYS[kind]}}


def _refuse_unsupported(hf: dict, where: str) -> None:
    """Fields of these families that change the maths in a way this decoder does not compute."""
    if hf.get("hidden_act", "silu") != "silu":
        raise LQSError(f"{where}: activation {hf.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
    if hf.get("pretraining_tp", 1) != 1:
        raise LQSError(f"{where}: pretraining_tp != 1 is not supported")
    if hf.get("quantization_config"):
        raise LQSError(
            f"{where}: quantized weights ({hf['quantization_config'].get('quant_method', '?')}) are not supported"
        )
    if float(hf.get("attention_dropout") or 0.0) != 0.0:
        raise LQSError(f"{where}: attention_dropout {hf['attention_dropout']} is not supported (no dropout here)")
    if hf.get("model_type") == "qwen2":
        if hf.get("use_sliding_window"):
            raise LQSError(
                f"{where}: Qwen2 use_sliding_window=true is not supported (transformers 4.x and 5.x disagree on "
                "which layers it windows; released Qwen2/2.5 checkpoints leave it off)"
            )
        if hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
            raise LQSError(f"{where}: Qwen2 head_dim != hidden_size / num_attention_heads is not supported")


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """Our :class:`ModelConfig` from an HF config dict; unsupported features are errors."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type not in _ARCH_CLASS:
        kind = f"{model_type!r} ({', '.join(archs)})" if archs else repr(model_type)
        raise LQSError(f"{where}: unsupported architecture {kind}; supported causal LMs: {SUPPORTED}")
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise LQSError(f"{where}: {', '.join(archs)} is not a causal LM (expected *ForCausalLM)")
    _refuse_unsupported(hf, where)
    theta, scaling = _rope_from_hf(hf, where)
    if model_type == "llama":  # attention_bias: q, k, v and o; mlp_bias: gate, up, down
        qkv = o = bool(hf.get("attention_bias", False))
        mlp = bool(hf.get("mlp_bias", False))
    else:  # Qwen2: q/k/v always; Mistral: none (both ignore attention_bias / mlp_bias)
        qkv, o, mlp = model_type == "qwen2", False, False
    window = hf.get("sliding_window") if model_type == "mistral" else None

    def _id(name):
        v = hf.get(name)
        return v[0] if isinstance(v, list) else v

    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rope_theta=theta,
            rope_scaling=scaling,
            sliding_window=window,
            qkv_bias=qkv,
            o_bias=o,
            mlp_bias=mlp,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            architecture=model_type,
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=_id("bos_token_id"),
            eos_token_id=_id("eos_token_id"),
            pad_token_id=_id("pad_token_id"),
            # several EOS ids (Llama-3.x instruct): the first ends documents, all are written back on export
            extra={"eos_token_ids": list(eos)}
            if isinstance(eos := hf.get("eos_token_id"), list) and len(eos) > 1
            else {},
        )
    except KeyError as e:
        raise LQSError(f"{where}: missing field {e.args[0]!r}") from None


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` of ``cfg`` as transformers 4.x and 5.x both read it (each ignores the other's fields)."""
    dt = str(dtype).removeprefix("torch.")
    rope_4x = None if cfg.rope_scaling is None else dict(cfg.rope_scaling)
    d = {
        "architectures": [_ARCH_CLASS[cfg.architecture]],
        "model_type": cfg.architecture,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.initializer_range,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_4x,
        "rope_parameters": {"rope_type": "default", **(rope_4x or {}), "rope_theta": cfg.rope_theta},
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.extra.get("eos_token_ids", cfg.eos_token_id),
        "pad_token_id": cfg.pad_token_id,
        "use_cache": True,
        "torch_dtype": dt,
        "dtype": dt,
    }
    if cfg.architecture == "mistral":
        d["sliding_window"] = cfg.sliding_window
    elif cfg.architecture == "llama":
        d.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    else:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    return d


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """A ``transformers`` config object (MistralConfig / LlamaConfig / Qwen2Config) for ``cfg``."""
    import transformers

    d = hf_config_dict(cfg, dtype)
    d.pop("dtype" if transformers.__version__.startswith("4.") else "torch_dtype")
    return transformers.AutoConfig.for_model(d.pop("model_type"), **d)


def generation_config_dict(cfg: ModelConfig) -> dict:
    """``generation_config.json``: the special ids, as transformers derives it from a model config."""
    ids = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    ids["eos_token_id"] = cfg.extra.get("eos_token_ids", cfg.eos_token_id)
    return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory (safetensors single/sharded, or pytorch_model.bin)."""
    from safetensors.torch import load_file

    def read(file: Path, loader) -> dict[str, torch.Tensor]:
        try:
            return loader(file)
        except Exception as e:  # safetensors, torch and zipfile each raise their own kind for a damaged file
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise LQSError(f"{file}: cannot read the weights ({reason}); truncated or corrupt? copy it again") from None

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return read(path / "model.safetensors", load_file)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise LQSError(f"{index}: no weight_map (expected {{tensor name: shard file}})")
        out: dict[str, torch.Tensor] = {}
        for f in sorted(set(weight_map.values())):
            if not (path / f).is_file():
                n = sum(v == f for v in weight_map.values())
                where = f"{path / f}: missing; {index.name} places {n} tensor(s) in it"
                raise LQSError(f"{where} (copy the whole directory)")
            shard = read(path / f, load_file)
            lost = sorted(k for k, v in weight_map.items() if v == f and k not in shard)
            if lost:
                where = f"{path / f}: lacks {len(lost)} tensor(s) that {index.name} places there"
                raise LQSError(f"{where} ({lost[0]}, ...)")
            out.update(shard)
        return out
    if (path / "pytorch_model.bin").is_file():
        return read(path / "pytorch_model.bin", lambda f: torch.load(f, map_location="cpu", weights_only=True))
    raise LQSError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def check_weights_match(sd: dict[str, torch.Tensor], model: Decoder, where: str) -> None:
    """Every tensor of ``sd`` (our names) has the shape ``model`` (built from ``config.json``) expects."""
    expected = model.state_dict()
    for name, t in sd.items():
        want = expected.get(name)
        if want is None or tuple(t.shape) == tuple(want.shape):
            continue
        if name in ("tok_embeddings.weight", "output.weight") and t.shape[1:] == want.shape[1:]:
            continue  # vocabulary rows: state_dict_from_hf checks them against vocab_size
        raise LQSError(
            f"{where}/config.json does not match the weights: {our_key_to_hf(name)} is {list(t.shape)}, "
            f"the config implies {list(want.shape)} (hidden_size {model.config.hidden_size}, intermediate_size "
            f"{model.config.intermediate_size}, heads {model.config.num_heads}/{model.config.num_kv_heads})"
        )


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
        if name in out and out[name].shape[0] < cfg.vocab_size:
            raise LQSError(
                f"config.json does not match the weights: {our_key_to_hf(name)} has {out[name].shape[0]} rows, "
                f"fewer than the config's vocab_size {cfg.vocab_size}"
            )
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
    """An HF Mistral/Llama/Qwen2 directory as our :class:`Decoder` (unsharded, on the CPU)."""
    cfg = config_from_hf(read_hf_config(path), where=f"{path}/config.json")
    model = Decoder(cfg, padded_vocab_size)
    try:
        sd = state_dict_from_hf(read_hf_state_dict(path), cfg, model.padded_vocab_size)
    except LQSError as e:
        raise LQSError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    check_weights_match(sd, model, str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise LQSError(
            f"{path}: checkpoint does not match its config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(dtype)


def save_tokenizer(tok, out_dir: str | os.PathLike) -> None:
    """``tok.save_pretrained(out_dir)``, made loadable by transformers 4.x and 5.x alike.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (a name 4.x does not know) and
    drops the sentencepiece ``tokenizer.model``: the class becomes ``PreTrainedTokenizerFast``
    (what ``tokenizer.json`` is to both), and ``tokenizer.model`` is copied from where ``tok``
    was loaded when it had one.
    """
    out = Path(out_dir)
    tok.save_pretrained(str(out))
    if not (out / "tokenizer.model").is_file():
        source_dir = Path(tok.name_or_path) if tok.name_or_path and Path(tok.name_or_path).is_dir() else None
        for cand in (getattr(tok, "vocab_file", None), source_dir and source_dir / "tokenizer.model"):
            if cand and Path(cand).is_file() and Path(cand).name.endswith(".model"):
                shutil.copyfile(cand, out / "tokenizer.model")
                break
    cfg_file = out / "tokenizer_config.json"
    if cfg_file.is_file() and (out / "tokenizer.json").is_file():
        cfg = json.loads(cfg_file.read_text())
        if str(cfg.get("tokenizer_class", "")).endswith("Backend"):
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


HF_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
"""The files :func:`save_hf_model` writes besides the tokenizer's."""


def save_hf_model(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    tokenizer_identity: dict | None = None,
    command: str | None = None,
) -> Path:
    """Write an HF directory atomically: config.json and generation_config.json (read alike by
    transformers 4.x and 5.x), model.safetensors, the tokenizer files if given (:func:`save_tokenizer`);
    ``tokenizer_identity`` (:mod:`lqs_megatron.data.tokenizers.fingerprint`) goes into config.json as ``lqs_tokenizer``;
    ``command`` (the ``lqs`` subcommand) is recorded in the directory (:func:`~lqs_megatron.utils.atomic.atomic_dir`).
    """
    from safetensors.torch import save_file

    hf_sd = state_dict_to_hf(state_dict, cfg)
    if dtype is not None:
        hf_sd = {k: v.to(dtype) for k, v in hf_sd.items()}
    dt = next(iter(hf_sd.values())).dtype
    with atomic_dir(out_dir, command=command) as tmp:
        hf_cfg = hf_config_dict(cfg, dt)
        if tokenizer_identity is not None:
            hf_cfg["lqs_tokenizer"] = tokenizer_identity
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config_dict(cfg), indent=2) + "\n")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in hf_sd.items()},
            tmp / "model.safetensors",
            metadata={"format": "pt"},
        )
        if tokenizer_dir is not None:
            from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer

            save_tokenizer(load_tokenizer(str(tokenizer_dir), require_eos=False), tmp)
    return Path(out_dir)
