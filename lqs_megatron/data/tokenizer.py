"""Local Hugging Face tokenizers: loading with clear errors, and the ids the pipeline needs.

A ``TOKENIZER_DIR`` is anything ``transformers.AutoTokenizer.from_pretrained`` loads
from a local path. Nothing is fetched from a hub: a missing path is an error, not a
download.
"""

from __future__ import annotations

import os
from functools import lru_cache

from lqs_megatron.errors import LQSError


@lru_cache(maxsize=8)
def load_tokenizer(path: str | os.PathLike, require_eos: bool = True):
    """Load a local tokenizer directory; raise :class:`LQSError` when it is missing or unusable."""
    path = str(path)
    if not os.path.isdir(path):
        raise LQSError(f"tokenizer directory {path!r} does not exist (a local directory is required; no hub access)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types here
        raise LQSError(f"cannot load a tokenizer from {path!r}: {type(e).__name__}: {e}") from None
    if require_eos and tok.eos_token_id is None:
        raise LQSError(f"tokenizer {path!r} has no EOS token; documents need one (set eos_token in its config)")
    return tok


def vocab_size(tok) -> int:
    """The number of ids the tokenizer can produce (base vocabulary plus added tokens)."""
    return len(tok)
