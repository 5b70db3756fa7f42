"""Tiny random Hugging Face models of each supported family, built with transformers (config +
``save_pretrained``, nothing downloaded), shared by the model, statistics and annotation tests.

Each family is a small config that exercises what makes it differ from a plain Llama:

- ``llama32``: Llama-3.2 style: ``rope_scaling: {rope_type: llama3}`` with an original context of
  32 positions, so that the high-, medium- and low-frequency branches all occur at test lengths;
  tied embeddings; an explicit ``head_dim`` different from hidden / heads.
- ``smollm2``: SmolLM2 style: Llama, tied embeddings, large rope theta, no scaling.
- ``qwen25``: Qwen2.5 style: q/k/v biases (random, not HF's zeros), tied embeddings.
- ``mistral_window``: Mistral with ``sliding_window`` 4, shorter than the test sequences.
- ``llama_bias``: Llama with ``attention_bias`` (q/k/v/o) and ``mlp_bias``, untied.

Weights are random (norm weights in [0.5, 1.5], biases N(0, 0.5^2)) so that a mixed-up norm,
a dropped bias or a wrong window cannot pass.
"""

from __future__ import annotations

import torch

FAMILIES = ("llama32", "smollm2", "qwen25", "mistral_window", "llama_bias")
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def family_config(family: str, vocab: int = 97, **overrides):
    """The transformers config object of ``family`` (tiny: 2 layers, width 32)."""
    import transformers

    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama32":
        kw = dict(base, rope_theta=10000.0, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=True, head_dim=16)
        cls = transformers.LlamaConfig
    elif family == "smollm2":
        kw = dict(base, rope_theta=100000.0, tie_word_embeddings=True)
        cls = transformers.LlamaConfig
    elif family == "qwen25":
        kw = dict(base, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False)
        cls = transformers.Qwen2Config
    elif family == "mistral_window":
        kw = dict(base, rope_theta=1000.0, sliding_window=4)
        cls = transformers.MistralConfig
    elif family == "llama_bias":
        kw = dict(base, rope_theta=500.0, attention_bias=True, mlp_bias=True)
        cls = transformers.LlamaConfig
    else:
        raise ValueError(family)
    kw.update(overrides)
    return cls(**kw)


def randomize(model, seed: int = 0) -> None:
    """Random norm weights and biases (HF initialises them to 1 and 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def hf_family_model(family: str, vocab: int = 97, seed: int = 0, **overrides):
    """A random ``*ForCausalLM`` of ``family`` in eval mode (float32)."""
    import transformers

    torch.manual_seed(seed)
    cfg = family_config(family, vocab, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    randomize(model, seed)
    return model


def save_family(family: str, path, vocab: int = 97, seed: int = 0, **overrides):
    """Write a random ``family`` model to ``path`` (safetensors + config.json); returns the HF model."""
    model = hf_family_model(family, vocab, seed, **overrides)
    model.save_pretrained(str(path))
    return model


def padded_batch(vocab: int, lengths=(13, 7, 1, 10), seed: int = 0):
    """Right-padded random ids ``[B, T]`` and the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask
