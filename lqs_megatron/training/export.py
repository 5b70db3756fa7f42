"""``lqs export-hf``: a checkpoint (any tp) as a Hugging Face directory.

The tp shards are merged (:func:`~lqs_megatron.models.parallelize.merge_state_dicts`), the
vocabulary padding rows dropped and the true ``vocab_size`` written to ``config.json``
(:func:`~lqs_megatron.models.hf.save_hf_model`), with the tokenizer files stored in the
checkpoint, and the checkpoint's tokenizer identity in ``config.json`` (``lqs_tokenizer``,
:mod:`lqs_megatron.data.tokenizers.fingerprint`). ``transformers`` loads the result with no missing or unexpected keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lqs_megatron.data.tokenizers.tokenizer import TOKENIZER_DIR_FILES
from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.hf import HF_MODEL_FILES, save_hf_model
from lqs_megatron.models.loading import read_full_state_dict
from lqs_megatron.utils.checkpoint_format import read_config, resolve_checkpoint
from lqs_megatron.utils.lock import output_lock


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` (atomically) from ``checkpoint`` (a root with ``latest`` or a step directory), under
    the output rule (:func:`~lqs_megatron.utils.lock.output_lock`: ``out_dir`` may replace only an earlier
    export)."""
    known = (*HF_MODEL_FILES, *TOKENIZER_DIR_FILES)
    with output_lock(out_dir, step="export-hf", inputs={"--checkpoint": checkpoint}, kind="dir", known=known):
        step_dir = resolve_checkpoint(checkpoint)
        meta = read_config(step_dir)
        cfg = ModelConfig.from_dict(meta["model"])
        sd = read_full_state_dict(step_dir)
        if cfg.tie_word_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        tok = step_dir / "tokenizer"
        tok_dir = tok if tok.is_dir() else None
        return save_hf_model(
            sd,
            cfg,
            out_dir,
            dtype=dtype,
            tokenizer_dir=tok_dir,
            tokenizer_identity=meta.get("tokenizer"),
            command="export-hf",
        )
