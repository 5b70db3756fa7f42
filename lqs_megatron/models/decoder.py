"""The decoder: Mistral / Llama / Qwen2 (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention).

The families differ only in options of :class:`~lqs_megatron.models.config.ModelConfig`:
linear biases (Qwen2's q/k/v, Llama's ``attention_bias`` / ``mlp_bias``), rotary scaling
(Llama-3.x ``llama3``, ``linear``), a sliding attention window (Mistral), tied embeddings.

Plain PyTorch, free of parallel plumbing: tensor parallelism is applied afterwards by
``lqs_megatron.models.parallelize`` (which swaps linears for their column/row-parallel
twins). Every shape below is written for one tensor-parallel rank, so head counts are
read from the (possibly sharded) weights at run time, never stored.

``Decoder.forward`` returns the final hidden states; the LM head is applied by the loss
(``lqs_megatron.kernels.per_example_loss``, never holding ``B x T x V`` logits) or by
``Decoder.logits`` when logits are wanted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lqs_megatron.models.config import ModelConfig


class RMSNorm(nn.Module):
    """``y = w * x / sqrt(mean(x^2) + eps)``; half-precision inputs are normalised in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x / rms(x)`` in ``x``'s dtype (the ``xhat`` whose product with ``w`` is the output)."""
        h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.normalize(x)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """The ``head_dim / 2`` rotary inverse frequencies (float64), scaled as ``scaling`` says.

    ``linear``: every frequency divided by ``factor``. ``llama3`` (Llama-3.1/3.2): with wavelength
    ``2 pi / f`` and ``N = original_max_position_embeddings``, wavelengths above ``N / low_freq_factor``
    are divided by ``factor``, those below ``N / high_freq_factor`` kept, and those between
    interpolated: ``(1 - s) f / factor + s f`` with ``s = (N / wavelength - low) / (high - low)``.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind is None or kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    n_orig = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    smooth = ((n_orig / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(
        wavelength > n_orig / low, inv_freq / factor, torch.where(wavelength < n_orig / high, inv_freq, interpolated)
    )


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary embeddings, HF's non-interleaved (``rotate_half``) layout.

    The inverse frequencies are computed in the working precision on every call (``head_dim / 2``
    numbers), not kept as a buffer: a buffer is rounded to float32 by ``model.float()`` and
    stays rounded after a later ``model.double()``, which cost float64 runs ~1e-8.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, float(theta), scaling

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [B, T] -> cos, sin [B, 1, T, head_dim], computed in float32 (float64 for float64 models)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        inv_freq = rope_inverse_frequencies(self.head_dim, self.theta, self.scaling).to(positions.device, work)
        freqs = positions.to(work)[..., None] * inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def sliding_window_mask(t: int, window: int, device: torch.device) -> torch.Tensor:
    """``[t, t]`` boolean, True where query ``i`` may attend key ``j``: ``i - window < j <= i``."""
    i = torch.arange(t, device=device)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # mask: [T, T] boolean (True = attend) of a sliding window; None = plain causal attention
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, Hq, T, hd] (local heads)
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        gqa = q.shape[1] != k.shape[1]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))  # [B, T, d]


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` (HF: gate_proj = w1, up_proj = w3, down_proj = w2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Decoder(nn.Module):
    """Causal decoder. ``padded_vocab_size >= config.vocab_size`` rows of embedding and head
    (tensor-parallel padding); padded rows are never looked up and are masked out of the softmax."""

    def __init__(self, config: ModelConfig, padded_vocab_size: int | None = None):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer or the HF config)")
        self.config = config
        self.padded_vocab_size = padded_vocab_size or config.vocab_size
        self.tok_embeddings = nn.Embedding(self.padded_vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.output = nn.Linear(config.hidden_size, self.padded_vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Seeded init, independent of the global RNG: N(0, std) everywhere, output projections
        (``wo``, ``w2``) scaled by ``1/sqrt(2 * num_layers)``, norms at 1, biases at 0."""
        gen = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                s = out_std if name.endswith(("wo.weight", "w2.weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * s)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids [B, T] -> hidden [B, T, d] after the final norm
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        h = self.tok_embeddings(input_ids)
        cos, sin = self.rope(position_ids, h.dtype)
        t, window = input_ids.shape[1], self.config.sliding_window
        # the window matters only past its length; shorter sequences take the plain causal kernel
        mask = sliding_window_mask(t, window, input_ids.device) if window is not None and t > window else None
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., vocab_size]`` logits (padding rows dropped), for tests and generation.

        A tensor-parallel head (``parallelize``) returns its vocabulary shard; ``gather``
        concatenates the shards. Training never calls this (the loss never holds logits).
        """
        out = self.output(hidden)
        if hasattr(self.output, "gather"):
            out = self.output.gather(out)
        return out[..., : self.config.vocab_size]
