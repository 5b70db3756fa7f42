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

Every dataset the project writes records its tokenizer there: ``tokenize``, ``tokenize-target``
and ``retokenize`` from the tokenizer they encode with; ``merge`` from its inputs (which must
agree); ``select``, ``order`` and ``sample-proxy`` copy their source's entry (with ``source``,
the input prefix) into ``OUT.stats.json``. Every model directory carries it too
(:func:`model_tokenizer`): a pretraining checkpoint's ``config.json`` (``tokenizer``) and its
``tokenizer/`` files, an ``export-hf`` directory's ``config.json`` (``lqs_tokenizer``) and
tokenizer files, a scorer's metadata. Where data meets a model or a tokenizer (``annotate``,
``pretrain``, ``evaluate``, ``train-scorer``, ``score``, ``merge``) both sides are compared by
:func:`check_same_tokenizer`; ``--allow-tokenizer-mismatch`` (:data:`ALLOW_FLAG`) turns the
refusal into a warning. Data or models written before identities were recorded stay usable.

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


ALLOW_FLAG = "--allow-tokenizer-mismatch"
"""The one flag (field ``allow_tokenizer_mismatch``) that overrides a tokenizer mismatch, in every command."""


def fingerprint(tok) -> str:
    """SHA-256 (hex, first 16 chars) of the tokenizer's vocabulary and special ids."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    special = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_info(path: str | os.PathLike) -> dict:
    """``{"path", "fingerprint", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}`` of a tokenizer dir."""
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer, vocab_size

    tok = load_tokenizer(str(path), require_eos=False)
    return {
        "path": os.path.abspath(str(path)),
        "fingerprint": fingerprint(tok),
        "vocab_size": vocab_size(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def identity(tok, path: str | os.PathLike) -> dict:
    """The identity a dataset or a model records: ``{"path", "fingerprint", "vocab_size"}``."""
    from lqs_megatron.data.tokenizers.tokenizer import vocab_size

    return {"path": os.path.abspath(str(path)), "fingerprint": fingerprint(tok), "vocab_size": vocab_size(tok)}


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
    scorer_tok: dict | None,
    data_tok: dict | None,
    data_name: str,
    scorer_name: str,
    hint: str = "",
    allow: bool = False,
    fix: str = "retokenize the data for the scorer (lqs retokenize) or use a scorer trained on this tokenizer",
) -> None:
    """Raise :class:`LQSError` when both tokenizers are known and differ (one line naming both sides and
    :data:`ALLOW_FLAG`; with ``allow`` a warning instead); warn when the data's is unknown (``hint`` says
    how to make it known). ``scorer_tok`` is the model's (or the other dataset's) side."""
    if scorer_tok is None or data_tok is None:
        if data_tok is None:
            logger.warning("the tokenizer of %s is unknown%s; only token ids are range-checked", data_name, hint)
        return
    if scorer_tok["fingerprint"] != data_tok["fingerprint"]:
        msg = (
            f"{data_name} was tokenized with {data_tok.get('path', '?')} (fingerprint {data_tok['fingerprint']}), "
            f"but {scorer_name} uses {scorer_tok.get('path', '?')} (fingerprint {scorer_tok['fingerprint']})"
        )
        if allow:
            logger.warning("%s; going on as %s asks", msg, ALLOW_FLAG)
            return
        raise LQSError(f"{msg}; {fix}, or pass {ALLOW_FLAG} to use them anyway")


def model_tokenizer(path: str | os.PathLike) -> dict | None:
    """The tokenizer identity a model directory carries, or None when it records none.

    A lqs checkpoint (a root with ``latest`` or a step directory): ``config.json``'s ``tokenizer``,
    else its ``tokenizer/`` files. A Hugging Face directory: ``config.json``'s ``lqs_tokenizer``
    (written by ``lqs export-hf``), else the tokenizer files in it.
    """
    from lqs_megatron.data.tokenizers.tokenizer import TOKENIZER_FILES
    from lqs_megatron.utils.checkpoint_format import is_checkpoint, read_config, resolve_checkpoint

    p = Path(path)
    if is_checkpoint(p):
        step_dir = resolve_checkpoint(p)
        recorded, tok_dir = read_config(step_dir).get("tokenizer"), step_dir / "tokenizer"
    else:
        try:
            recorded = json.loads((p / "config.json").read_text()).get("lqs_tokenizer")
        except (OSError, ValueError, AttributeError):
            recorded = None
        tok_dir = p
    if isinstance(recorded, dict) and recorded.get("fingerprint"):
        return recorded
    if tok_dir.is_dir() and any((tok_dir / f).is_file() for f in TOKENIZER_FILES):
        return tokenizer_info(tok_dir)
    return None


def check_data_tokenizer(
    prefixes: dict[str, str | os.PathLike], model_tok: dict | None, model_name: str, allow: bool = False
) -> None:
    """Check every dataset of ``prefixes`` (``{name: prefix}``, e.g. ``{"--train P": P}``) against the
    model's tokenizer identity ``model_tok`` (:func:`check_same_tokenizer`); nothing when the model's
    is unknown (data or models written before identities were recorded)."""
    if model_tok is None:
        return
    for name, prefix in prefixes.items():
        check_same_tokenizer(
            model_tok,
            dataset_tokenizer(prefix),
            name,
            model_name,
            allow=allow,
            fix="tokenize the data with the model's tokenizer (lqs tokenize / lqs retokenize) or use a model of "
            "the data's tokenizer",
        )


def inputs_tokenizer(prefixes: list[str | os.PathLike], allow: bool = False) -> dict | None:
    """The one tokenizer identity of datasets written together (``merge``): their common entry, None when
    none records one. Inputs of different tokenizers are refused (:func:`check_same_tokenizer`); with
    ``allow`` their union is recorded (``{"path": "mixed: ...", "fingerprint": "mixed:A+B"}``), which
    matches no model, so every later use needs :data:`ALLOW_FLAG` again."""
    known = [(str(p), info) for p in prefixes if (info := dataset_tokenizer(p)) is not None]
    if len(known) < len(prefixes) and known:
        missing = [str(p) for p in prefixes if str(p) not in {k for k, _ in known}]
        logger.warning(
            "the tokenizer of %s is unknown; the merged dataset records %s's", ", ".join(missing), known[0][0]
        )
    if not known:
        return None
    first_name, first = known[0]
    fps = []
    for name, info in known:
        check_same_tokenizer(
            first,
            info,
            f"--data {name}",
            f"--data {first_name}",
            allow=allow,
            fix="retokenize one of them with the other's tokenizer (lqs retokenize)",
        )
        if info["fingerprint"] not in fps:
            fps.append(info["fingerprint"])
    if len(fps) == 1:
        return first
    paths = sorted({info.get("path", "?") for _, info in known})
    return {"path": "mixed: " + ", ".join(paths), "fingerprint": "mixed:" + "+".join(fps)}


def write_dataset_identity(out_prefix: str | os.PathLike, command: str, tokenizer: dict | None, **extra) -> None:
    """``OUT.stats.json`` of a dataset built from others (``merge``, ``select``, ``order``, ``sample-proxy``):
    the command, its tokenizer identity (None: unknown) and ``extra`` (``source``/``inputs``)."""
    from lqs_megatron.utils.atomic import save_json

    save_json(
        f"{out_prefix}.stats.json", {"command": command, "output": str(out_prefix), "tokenizer": tokenizer, **extra}
    )
