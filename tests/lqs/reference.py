"""An independent float64 implementation of docs/algorithm.md, for the tests only.

Nothing here comes from the engine: its own functional forward of the supported families
(read from the HF safetensors and config.json by HF names; RMSNorm, RoPE and softmax in
float64, which HF cast to float64 does not do): Mistral with its sliding window, Llama with
``llama3`` / ``linear`` rope scaling and ``attention_bias`` / ``mlp_bias``, Qwen2 with q/k/v
biases (any ``*_proj.bias`` tensor present is added), tied or untied heads. One example at a
time with no padding, materialised per-example gradients (``torch.func.grad``), HVPs by
``torch.func.jvp`` of the gradient, all theta kept in memory (no checkpointing) and literal
loops over the steps as written in the contract.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.func import grad, jvp

from lqs_megatron.data.datasets.indexed import IndexedDataset

Params = dict[str, torch.Tensor]


def load_hf_params(model_dir: str | Path) -> tuple[Params, dict]:
    from safetensors.torch import load_file

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    params = {k: v.double() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}
    return params, cfg


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _inv_freq(cfg: dict, hd: int) -> torch.Tensor:
    """Rotary inverse frequencies, one at a time, with the Llama-3.x / linear scaling as published."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    out = []
    for i in range(hd // 2):
        f = 1.0 / theta ** (2 * i / hd)
        if kind == "linear":
            f = f / rope["factor"]
        elif kind == "llama3":
            wavelength = 2 * math.pi / f
            n = rope["original_max_position_embeddings"]
            lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
            if wavelength > n / lo:  # low frequency: interpolated by the factor
                f = f / rope["factor"]
            elif wavelength >= n / hi:  # in between: a smooth blend of the two
                smooth = (n / wavelength - lo) / (hi - lo)
                f = (1 - smooth) * f / rope["factor"] + smooth * f
        else:
            assert kind == "default", kind
        out.append(f)
    return torch.tensor(out, dtype=torch.float64)


def _attention_mask(cfg: dict, T: int) -> torch.Tensor:
    """Additive ``[T, T]`` mask: causal, and Mistral's window (key within ``sliding_window - 1`` before)."""
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    assert not (cfg["model_type"] == "qwen2" and cfg.get("use_sliding_window"))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    hidden = (j > i) | ((i - j >= window) if window is not None else False)
    return torch.zeros(T, T, dtype=torch.float64).masked_fill(hidden, float("-inf"))


def _linear(P: Params, name: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ P[name + ".weight"].T
    return y + P[name + ".bias"] if name + ".bias" in P else y


def logits(P: Params, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """``[T, V]`` logits of one unpadded sequence ``ids [T]`` (float64 throughout)."""
    T = ids.shape[0]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * _inv_freq(cfg, hd)[None]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos(), emb.sin()
    mask = _attention_mask(cfg, T)
    h = P["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        x = _rms(h, P[p + "input_layernorm.weight"], eps)
        q = _linear(P, p + "self_attn.q_proj", x).view(T, H, hd).transpose(0, 1)
        k = _linear(P, p + "self_attn.k_proj", x).view(T, Hkv, hd).transpose(0, 1)
        v = _linear(P, p + "self_attn.v_proj", x).view(T, Hkv, hd).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=0)
        v = v.repeat_interleave(H // Hkv, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1) @ v  # [H, T, hd]
        h = h + _linear(P, p + "self_attn.o_proj", att.transpose(0, 1).reshape(T, H * hd))
        x = _rms(h, P[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(_linear(P, p + "mlp.gate_proj", x))
        h = h + _linear(P, p + "mlp.down_proj", gate * _linear(P, p + "mlp.up_proj", x))
    h = _rms(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else P["lm_head.weight"]
    return h @ head.T


def example_loss(P: Params, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """``l(x)``: mean token cross-entropy of ``x[:-1] -> x[1:]``."""
    lg = logits(P, cfg, x[:-1])
    return torch.nn.functional.cross_entropy(lg, x[1:], reduction="mean")


def mean_loss(P: Params, cfg: dict, xs: list[torch.Tensor]) -> torch.Tensor:
    return sum(example_loss(P, cfg, x) for x in xs) / len(xs)


def read_examples(prefix: str, max_length: int, limit: int | None = None) -> list[torch.Tensor]:
    ds = IndexedDataset(prefix)
    n = len(ds) if limit is None else min(limit, len(ds))
    return [torch.from_numpy(ds[i][: max_length + 1].astype(np.int64)) for i in range(n)]


def _dot(a: Params, b: Params) -> float:
    return float(sum((a[k] * b[k]).sum() for k in a))


def reference_scores(
    model_dir: str, train: str, target: str, proxy: str, T: int, lr: float, B: int, K: int, L: int
) -> dict[str, np.ndarray]:
    """Raw scores of the contract, literally: ``{"lqs": s, "pds": s}`` (one sweep serves both)."""
    P0, cfg = load_hf_params(model_dir)
    names = [k for k in P0 if not (cfg.get("tie_word_embeddings") and k == "lm_head.weight")]
    P0 = {k: P0[k] for k in names}
    D_train, D_tgt, D_px = read_examples(train, L), read_examples(target, L), read_examples(proxy, L)

    def batch(i):
        return [D_train[j % len(D_train)] for j in range(i * B, (i + 1) * B)]

    theta = [P0]
    for i in range(T):
        g = grad(mean_loss)(theta[i], cfg, batch(i))
        theta.append({k: theta[i][k] - lr * g[k] for k in names})

    lam = grad(mean_loss)(theta[T], cfg, D_tgt)
    c = np.ones(len(D_px))
    s = {"lqs": np.zeros(len(D_px)), "pds": np.zeros(len(D_px))}
    for i in range(T - 1, -1, -1):
        if i % K == 0:
            lam_norm = math.sqrt(_dot(lam, lam))
            for n, x in enumerate(D_px):
                g = grad(example_loss)(theta[i], cfg, x)
                g_norm = math.sqrt(_dot(g, g))
                cos = 0.0 if g_norm * lam_norm == 0 else max(-1.0, min(1.0, _dot(g, lam) / (g_norm * lam_norm)))
                ratio = {"lqs": g_norm / (c[n] if c[n] != 0 else 1.0), "pds": g_norm}
                for method in s:
                    s[method][n] += lr * lam_norm * ratio[method] * cos
                c[n] = g_norm
        g_tgt = grad(mean_loss)(theta[i], cfg, D_tgt)
        b = batch(i)
        _, hv = jvp(lambda p, b=b: grad(mean_loss)(p, cfg, b), (theta[i],), (lam,))
        lam = {k: lam[k] + g_tgt[k] - lr * hv[k] for k in names}
    return s


def normalized(s: np.ndarray) -> np.ndarray:
    std = s.std()
    return np.zeros_like(s) if std == 0 else np.clip((s - s.mean()) / std, -3, 3)


def reference_target_curve(model_dir: str, train: str, target: str, T: int, lr: float, B: int, L: int) -> list[float]:
    """``L_tgt(theta_i)`` for ``i = 0..T`` of the plain-SGD replay, literally (float64)."""
    P, cfg = load_hf_params(model_dir)
    names = [k for k in P if not (cfg.get("tie_word_embeddings") and k == "lm_head.weight")]
    P = {k: P[k] for k in names}
    D_train, D_tgt = read_examples(train, L), read_examples(target, L)
    curve = [float(mean_loss(P, cfg, D_tgt))]
    for i in range(T):
        b = [D_train[j % len(D_train)] for j in range(i * B, (i + 1) * B)]
        g = grad(mean_loss)(P, cfg, b)
        P = {k: P[k] - lr * g[k] for k in names}
        curve.append(float(mean_loss(P, cfg, D_tgt)))
    return curve
