"""The data scorer: a decoder backbone, mean pooling over the real tokens, a linear head with bias.

``score(x) = w . mean_{t < n} h_t(x) + b`` where ``h_t`` are the backbone's final hidden
states (after its final norm) and ``n`` the number of real tokens of ``x``; trained with
MSE against the normalised LQS scores (DELT: a fairseq-dense-125M backbone, mean pooling,
a linear head, MSE).

Backbones:

- ``decoder``: our :class:`~lqs_megatron.models.decoder.Decoder` (the fast path), either
  randomly initialised from a named config (``--model-config NAME --tokenizer DIR``) or
  loaded from a local Hugging Face directory it computes exactly (Mistral, Llama incl.
  Llama-3.x, Qwen2: whatever :func:`~lqs_megatron.models.hf.config_from_hf` accepts) or a
  ``lqs pretrain`` checkpoint (``--base DIR``). Its LM head is dropped: the scorer never
  needs logits.
- ``hf``: any other local HF causal LM (e.g. DELT's fairseq-dense-125M, an XGLM, a GPT-2, or
  a Llama whose rope scaling the fast path does not cover), through
  ``transformers.AutoModelForCausalLM``; the scorer uses its base model's
  ``last_hidden_state``.

Padding is on the right and attention is causal, so a real token never sees padding and a
sequence's score does not depend on its batch neighbours (see ``docs/scorer.md``).

Checkpoint directory (written by :func:`save_scorer` into a directory the caller makes
atomic)::

    scorer.json          ScorerConfig (backbone kind, model config, max length, BOS/pad ids,
                         tokenizer fingerprint) and free-form metadata (training metrics)
    model.safetensors    every tensor: backbone.* and head.weight / head.bias (float32)
    tokenizer/           the scorer's tokenizer (AutoTokenizer loads it)
    backbone/config.json HF config of an ``hf`` backbone (AutoModel.from_config rebuilds it)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lqs_megatron.errors import LQSError

BACKBONES = ("decoder", "hf")


@dataclass
class ScorerConfig:
    """Everything needed to rebuild a scorer and feed it the right tokens."""

    backbone: str
    """``decoder`` (our Decoder) or ``hf`` (a transformers AutoModel)."""
    hidden_size: int
    """Width of the pooled representation (the head's input)."""
    vocab_size: int
    """Token ids must be below this (the backbone's embedding rows)."""
    model: dict = field(default_factory=dict)
    """``ModelConfig.to_dict()`` of a ``decoder`` backbone (empty for ``hf``)."""
    padded_vocab_size: int | None = None
    """Embedding rows of a ``decoder`` backbone (>= vocab_size when loaded from a padded checkpoint)."""
    max_length: int = 1024
    """Tokens per sequence the scorer reads (BOS included); longer sequences are cut."""
    bos_token_id: int | None = None
    """Prepended to every sequence when set (data from ``lqs tokenize`` carries no BOS)."""
    pad_token_id: int = 0
    """Id written into padding positions (never attended to by real tokens, never pooled)."""
    tokenizer: dict | None = None
    """``lqs_megatron.data.tokenizers.fingerprint.tokenizer_info`` of the scorer's tokenizer."""
    source: str = ""
    """Where the backbone came from (HF directory or ``config:NAME``)."""
    meta: dict = field(default_factory=dict)
    """Free-form: training arguments and metrics; not used to rebuild the model."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise LQSError(f"scorer backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.max_length < 2:
            raise LQSError(f"--max-length must be at least 2, got {self.max_length}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise LQSError(f"pad id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if self.bos_token_id is not None and not 0 <= self.bos_token_id < self.vocab_size:
            raise LQSError(f"BOS id {self.bos_token_id} is outside the vocabulary of {self.vocab_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScorerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def effective_lengths(self, lengths):
        """Tokens the scorer reads for sequences of ``lengths`` tokens (BOS added, cut at max_length)."""
        extra = 1 if self.bos_token_id is not None else 0
        return (lengths.astype("int64") + extra).clip(max=self.max_length)


class Scorer(nn.Module):
    """Backbone -> mean pooling over real tokens (float32) -> ``Linear(hidden, 1)`` with bias."""

    def __init__(self, backbone: nn.Module, hidden_size: int, hf_backbone: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1, bias=True)
        self.hf_backbone = hf_backbone

    @torch.no_grad()
    def init_head(self, seed: int = 0, std: float = 0.02) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * std)
        self.head.bias.zero_()

    def pooled(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # input_ids [B, T] right-padded, lengths [B] real tokens -> [B, d] float32 mean of real positions
        mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]  # [B, T]
        if self.hf_backbone:
            h = self.backbone(input_ids=input_ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
        else:
            h = self.backbone(input_ids)  # [B, T, d]
        h = h.float() * mask[..., None]
        return h.sum(1) / lengths[:, None].to(h.dtype)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` in float32 (the head runs in float32 even under autocast)."""
        p = self.pooled(input_ids, lengths)
        with torch.autocast(device_type=p.device.type, enabled=False):
            return torch.nn.functional.linear(p, self.head.weight.float(), self.head.bias.float()).squeeze(-1)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32."""
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def _strip_lm_head(decoder: nn.Module) -> nn.Module:
    decoder.output = None  # the scorer reads hidden states only; no vocab x d head to hold or sync
    return decoder


def _base_kind(path: str) -> str:
    """``ours`` (a lqs checkpoint or an HF directory the fast path covers: our Decoder) or ``hf`` (any other)."""
    from lqs_megatron.utils.checkpoint_format import is_checkpoint

    p = Path(path)
    if not p.is_dir():
        raise LQSError(f"--base {path!r} does not exist (a local Hugging Face model directory is required)")
    if is_checkpoint(p):
        return "ours"
    if not (p / "config.json").is_file():
        raise LQSError(f"--base {path!r}: no config.json; not a Hugging Face model directory nor a lqs checkpoint")
    from lqs_megatron.models.hf import read_hf_config

    return "ours" if fast_path_covers(read_hf_config(p)) else "hf"


def fast_path_covers(hf_config: dict) -> bool:
    """Whether our decoder computes this HF config exactly (else the generic HF backbone is used)."""
    from lqs_megatron.models.hf import config_from_hf

    try:
        config_from_hf(hf_config)
    except (LQSError, TypeError, ValueError):
        return False
    return True


def _base_tokenizer(path: str) -> str:
    """The tokenizer shipped with a base model: the HF directory itself, or a checkpoint's ``tokenizer/``."""
    from lqs_megatron.utils.checkpoint_format import is_checkpoint, resolve_checkpoint

    if is_checkpoint(path):
        tok = resolve_checkpoint(path) / "tokenizer"
        if not tok.is_dir():
            raise LQSError(f"--base {path!r} holds no tokenizer/; pass --tokenizer TOKENIZER_DIR")
        return str(tok)
    return path


def _hf_backbone(path: str) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(path, **_dtype_kwarg(torch.float32), local_files_only=True)
    except Exception as e:  # transformers raises many types
        raise LQSError(f"--base {path!r}: cannot load it as a causal LM: {type(e).__name__}: {e}") from None
    return lm.base_model


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` in transformers 5, ``torch_dtype`` in 4.x (where an
    unknown ``dtype`` lands in the config as a torch.dtype and breaks its JSON)."""
    import transformers

    return {"torch_dtype" if transformers.__version__.startswith("4.") else "dtype": dtype}


def _hf_hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def build_scorer(
    base: str | None = None,
    model_config: str | None = None,
    tokenizer: str | None = None,
    max_length: int = 1024,
    seed: int = 0,
    use_bos: bool = True,
) -> tuple[Scorer, ScorerConfig, str]:
    """A new scorer: ``(model, config, tokenizer_dir)``.

    ``base``: an HF causal-LM directory or a ``lqs pretrain`` checkpoint (its tokenizer
    unless ``tokenizer`` is given); ``model_config``: a named config or YAML path, random
    init with ``seed``, ``tokenizer`` required. The head is initialised with ``seed`` either way.
    Our decoders come from :mod:`lqs_megatron.models.loading` (the one way to get a model).
    """
    from lqs_megatron.data.tokenizers.fingerprint import tokenizer_info
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer, vocab_size

    if (base is None) == (model_config is None):
        raise LQSError("give exactly one of --base HF_DIR or --model-config NAME")
    if base is None and tokenizer is None:
        raise LQSError("--model-config needs --tokenizer TOKENIZER_DIR (the vocabulary comes from it)")
    base_kind = _base_kind(base) if base is not None else None
    tok_dir = tokenizer if tokenizer is not None else _base_tokenizer(base)
    tok = load_tokenizer(str(tok_dir), require_eos=False)
    info = tokenizer_info(tok_dir)
    padded = None
    if base is not None:
        if base_kind == "ours":
            from lqs_megatron.models.loading import load_model

            decoder = _strip_lm_head(load_model(base, dtype=torch.float32, device="cpu"))
            kind, model_dict = "decoder", decoder.config.to_dict()
            hidden, vocab, padded = decoder.config.hidden_size, decoder.config.vocab_size, decoder.padded_vocab_size
            backbone = decoder
        else:
            backbone = _hf_backbone(base)
            kind, model_dict = "hf", {}
            hidden, vocab = _hf_hidden_size(backbone.config), int(backbone.get_input_embeddings().num_embeddings)
        source = os.path.abspath(base)
    else:
        from lqs_megatron.models.config import load_model_config
        from lqs_megatron.models.loading import build_model

        cfg = load_model_config(
            model_config,
            vocab_size=vocab_size(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        backbone = _strip_lm_head(build_model(cfg, seed=seed, device="cpu"))
        kind, model_dict, hidden, vocab = "decoder", cfg.to_dict(), cfg.hidden_size, cfg.vocab_size
        padded = backbone.padded_vocab_size
        source = f"config:{model_config}"
    positions = model_dict.get("max_position_embeddings") or getattr(backbone.config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise LQSError(f"--max-length {max_length} exceeds the backbone's {positions} positions")
    if info["vocab_size"] > vocab:
        raise LQSError(f"tokenizer {tok_dir!r} has {info['vocab_size']} ids but the backbone embeds only {vocab}")
    pad = tok.pad_token_id if tok.pad_token_id is not None and tok.pad_token_id < vocab else 0
    scfg = ScorerConfig(
        backbone=kind,
        hidden_size=hidden,
        vocab_size=vocab,
        model=model_dict,
        padded_vocab_size=padded,
        max_length=max_length,
        bos_token_id=tok.bos_token_id if use_bos else None,
        pad_token_id=pad,
        tokenizer=info,
        source=source,
    )
    model = Scorer(backbone, hidden, hf_backbone=kind == "hf")
    model.init_head(seed)
    return model, scfg, str(tok_dir)


def save_scorer(model: Scorer, cfg: ScorerConfig, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Write the checkpoint files into ``out_dir`` (an existing directory; the caller makes it atomic)."""
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.models.hf import save_tokenizer

    out = Path(out_dir)
    model = unwrap(model)
    save_model_flat({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, out / "model.safetensors")
    save_tokenizer(load_tokenizer(str(tokenizer_dir), require_eos=False), out / "tokenizer")
    if cfg.backbone == "hf":
        model.backbone.config.save_pretrained(str(out / "backbone"))
    (out / "scorer.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    while isinstance(getattr(model, "module", None) or getattr(model, "_orig_mod", None), nn.Module):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_model_flat(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """safetensors file of ``state`` (each tensor copied, so tied weights are stored under each name)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def resolve_scorer_dir(path: str | os.PathLike) -> Path:
    """``path`` if it holds ``scorer.json``, else ``path/best`` (a ``train-scorer`` output directory)."""
    p = Path(path)
    for cand in (p, p / "best"):
        if (cand / "scorer.json").is_file():
            return cand
    if not p.exists():
        raise LQSError(f"scorer checkpoint {str(p)!r} does not exist")
    raise LQSError(f"{p}: no scorer.json (nor best/scorer.json); is this a `lqs train-scorer` output directory?")


def load_scorer(path: str | os.PathLike) -> tuple[Scorer, ScorerConfig, Path]:
    """``(model, config, checkpoint_dir)`` from a scorer checkpoint (float32, CPU, eval mode)."""
    from lqs_megatron.utils.integrity import load_safetensors

    ckpt = resolve_scorer_dir(path)
    try:
        cfg = ScorerConfig.from_dict(json.loads((ckpt / "scorer.json").read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise LQSError(f"{ckpt}/scorer.json: unreadable scorer config ({e})") from None
    if cfg.backbone == "decoder":
        from lqs_megatron.models.config import ModelConfig
        from lqs_megatron.models.decoder import Decoder
        from lqs_megatron.models.parallelize import parallelize
        from lqs_megatron.parallel.dims import ParallelDims

        # the layers build_scorer's decoders have (parallelize at tp=1, as models.loading gives them): the same
        # function, and the same tp_dim marks, which decide how the gradient clipping norm is summed; a plain
        # Decoder here made a resumed train-scorer differ from an uninterrupted one in the last bits
        decoder = Decoder(ModelConfig.from_dict(cfg.model), cfg.padded_vocab_size)
        backbone = _strip_lm_head(parallelize(decoder, ParallelDims(), decoder.padded_vocab_size))
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel

        backbone = AutoModel.from_config(AutoConfig.from_pretrained(str(ckpt / "backbone")))
    model = Scorer(backbone, cfg.hidden_size, hf_backbone=cfg.backbone == "hf")
    weights = ckpt / "model.safetensors"
    if not weights.is_file():
        raise LQSError(f"{ckpt}: model.safetensors is missing")
    missing, unexpected = model.load_state_dict(load_safetensors(weights), strict=False)  # validated, finite
    if missing or unexpected:
        raise LQSError(f"{weights}: does not match scorer.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.float().eval(), cfg, ckpt
