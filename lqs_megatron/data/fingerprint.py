"""Does the data speak the scorer's tokenizer? Tokenizer fingerprints and the checks built on them.

A scorer only makes sense on token ids from the tokenizer it was trained with. A
tokenizer is identified by its **fingerprint**: the SHA-256 of its id -> token mapping
(``get_vocab()``, added tokens included) and its special ids. Two tokenizer directories
with the same fingerprint produce interchangeable ids, wherever they live.

Where the data's tokenizer comes from, first match wins:

1. the ``--tokenizer DIR`` flag of the command;
2. ``PREFIX.stats.json`` (written by ``lqs tokenize`` / ``lqs retokenize``): its
   ``tokenizer`` entry (a dict with a ``fingerprint``, or a path) or else its
   ``args.tokenizer_dir`` (tokenize) or ``args.dst_tokenizer`` (retokenize), paths to
   tokenizer directories;
3. ``DIR/stats.json`` of a scorer data directory (``lqs prepare-scorer-data``).

When none is known, only the id range is checked (every id must be below the
scorer's vocabulary size, checked batch by batch while scoring), and a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from lqs_megatron.errors import LQSError

logger = logging.getLogger(__name__)


def fingerprint(tok) -> str:
    """SHA-256 (hex, first 16 chars) of the tokenizer's vocabulary and special ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    special = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_info(path: str | os.PathLike) -> dict:
    """``{"path", "fingerprint", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}`` of a tokenizer dir."""
    from lqs_megatron.data.tokenizer import load_tokenizer, vocab_size

    tok = load_tokenizer(str(path), require_eos=False)
    return {
        "path": os.path.abspath(str(path)),
        "fingerprint": fingerprint(tok),
        "vocab_size": vocab_size(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _from_entry(entry, where: str) -> dict | None:
    if isinstance(entry, dict) and entry.get("fingerprint"):
        return entry
    path = entry.get("path") if isinstance(entry, dict) else entry
    if isinstance(path, str) and os.path.isdir(path):
        return tokenizer_info(path)
    if entry:
        logger.warning("%s names tokenizer %r, which is not available here; its fingerprint is unknown", where, path)
    return None


def dataset_tokenizer(prefix: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> dict | None:
    """The tokenizer info of an indexed dataset (see the module docstring), or None when unknown."""
    if tokenizer is not None:
        return tokenizer_info(tokenizer)
    candidates = [Path(f"{prefix}.stats.json")]
    if (Path(prefix).parent / "train_scores.npy").is_file():  # a split of a scorer data directory
        candidates.append(Path(prefix).parent / "stats.json")
    for stats in candidates:
        if stats.is_file():
            try:
                meta = json.loads(stats.read_text())
                args = meta.get("args") or {}
                entry = meta.get("tokenizer") or args.get("tokenizer_dir") or args.get("dst_tokenizer")
            except (json.JSONDecodeError, AttributeError):
                continue
            info = _from_entry(entry, str(stats)) if entry else None
            if info is not None:
                return info
    return None


def check_same_tokenizer(
    scorer_tok: dict | None, data_tok: dict | None, data_name: str, scorer_name: str, hint: str = ""
) -> None:
    """Raise :class:`LQSError` when both tokenizers are known and differ; warn when the data's is unknown
    (``hint`` says how to make it known)."""
    if scorer_tok is None or data_tok is None:
        if data_tok is None:
            logger.warning("the tokenizer of %s is unknown%s; only token ids are range-checked", data_name, hint)
        return
    if scorer_tok["fingerprint"] != data_tok["fingerprint"]:
        raise LQSError(
            f"{data_name} was tokenized with {data_tok.get('path', '?')} (fingerprint {data_tok['fingerprint']}), "
            f"but {scorer_name} uses {scorer_tok.get('path', '?')} (fingerprint {scorer_tok['fingerprint']}); "
            "retokenize the data for the scorer (lqs retokenize) or use a scorer trained on this tokenizer"
        )
