"""The one way to get a model: ``load_model`` (HF directory or our checkpoint) and ``build_model`` (random init).

Both return a :class:`Decoder` already passed through :func:`parallelize` for ``dims.tp``
(with ``dims=None``: one process, tp=1), in ``dtype`` on ``device``. The annotation, the
scorer, ``lqs evaluate`` and ``lqs pretrain`` all use these.

- HF directories (``MistralForCausalLM`` / ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``) go through
  :mod:`lqs_megatron.models.hf`; with tp > 1 each rank reads the full tensors and keeps
  its shard.
- Our checkpoints (a root with ``latest`` or one ``step_X`` directory): a rank reads only
  its own shard file when the checkpoint's tp equals ``dims.tp``; otherwise the shards are
  merged and re-split, so a tp=2 checkpoint loads on one process and the other way round.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from lqs_megatron.errors import LQSError
from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.models.parallelize import check_tp, merge_state_dicts, padded_vocab_size, parallelize, tp_size_of
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.utils.checkpoint_format import is_checkpoint, read_config, read_model_shard, resolve_checkpoint


def build_model(
    config: ModelConfig,
    dims: ParallelDims | None = None,
    seed: int = 0,
    make_vocab_size_divisible_by: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Decoder:
    """A randomly initialised decoder: the full model is seeded (``Decoder.init_weights``), then
    sharded, so every tp gives the same function."""
    dims = dims or ParallelDims()
    check_tp(config, dims.tp)
    model = Decoder(config)
    model.init_weights(seed)
    parallelize(model, dims, make_vocab_size_divisible_by)
    return model.to(device=device or dims.device, dtype=dtype)


@contextlib.contextmanager
def _on_meta():
    """Build modules on the meta device (no memory, no init). ``nn.Embedding``'s initialiser is
    skipped meanwhile: on meta tensors it only costs a multi-second import of ``torch._dynamo``."""
    reset = nn.Embedding.reset_parameters
    nn.Embedding.reset_parameters = lambda self: None
    try:
        with torch.device("meta"):
            yield
    finally:
        nn.Embedding.reset_parameters = reset


def _assign(model: Decoder, sd: dict[str, torch.Tensor], where: str) -> Decoder:
    """Load ``sd`` into a model whose parameters live on the meta device (no double allocation)."""
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    tied = model.config.tie_word_embeddings
    missing = [m for m in missing if not (tied and m == "output.weight")]
    if missing or unexpected:
        raise LQSError(f"{where}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        model.output.weight = model.tok_embeddings.weight
    return model


def _load_checkpoint(path: Path, dims: ParallelDims, multiple: int | None) -> Decoder:

    step_dir = resolve_checkpoint(path)
    meta = read_config(step_dir)
    cfg = ModelConfig.from_dict(meta["model"])
    check_tp(cfg, dims.tp, name=str(step_dir))
    stored_multiple = meta.get("make_vocab_size_divisible_by", 1)
    padded = meta["padded_vocab_size"]
    with _on_meta():
        model = Decoder(cfg, padded)
    if meta["tp"] == dims.tp and (multiple is None or multiple == stored_multiple):
        # same split: each rank reads only its own shard file
        with _on_meta():
            parallelize(model, dims, stored_multiple)
        return _assign(model, read_model_shard(step_dir, dims.tp_rank, dims.tp), str(step_dir))
    # another split: merge the shards, then shard again for this tp
    _assign(model, read_full_state_dict(step_dir), str(step_dir))
    return parallelize(model, dims, multiple or stored_multiple)


def _load_hf(path: Path, dims: ParallelDims, multiple: int | None) -> Decoder:
    from lqs_megatron.models.hf import load_hf_model

    model = load_hf_model(path)
    check_tp(model.config, dims.tp, name=str(path))
    return parallelize(model, dims, multiple or 1)


def load_model(
    path: str | os.PathLike,
    dims: ParallelDims | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    make_vocab_size_divisible_by: int | None = None,
) -> Decoder:
    """An HF directory or one of our checkpoints as a decoder sharded for ``dims.tp``.

    ``make_vocab_size_divisible_by``: vocabulary padding multiple (times tp); None keeps the
    checkpoint's (1 for HF directories).
    """

    dims = dims or ParallelDims()
    p = Path(path)
    if not p.exists():
        raise LQSError(f"model {str(p)!r} does not exist (an HF directory or a lqs checkpoint is expected)")
    if is_checkpoint(p):
        model = _load_checkpoint(p, dims, make_vocab_size_divisible_by)
    elif (p / "config.json").is_file():
        model = _load_hf(p, dims, make_vocab_size_divisible_by)
    else:
        raise LQSError(f"{p} is neither a Hugging Face model directory (config.json) nor a lqs checkpoint (latest)")
    assert tp_size_of(model) == dims.tp
    assert model.padded_vocab_size % dims.tp == 0 and model.padded_vocab_size >= padded_vocab_size(
        model.config.vocab_size, dims.tp
    )
    return model.to(device=device or dims.device, dtype=dtype)


def read_full_state_dict(step_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tp shard merged into the full (padded) state dict."""
    tp = read_config(step_dir)["tp"]
    return merge_state_dicts([read_model_shard(step_dir, r, tp) for r in range(tp)])
