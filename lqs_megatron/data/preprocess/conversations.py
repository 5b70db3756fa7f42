"""``lqs tokenize-target``: LIMA-style conversations -> an indexed dataset, one sequence per conversation.

Each jsonl line holds, in ``field`` (default ``conversations``), a list of turns: strings
(LIMA: user, assistant, user, ... alternating), or objects with a role (``"from"`` or
``"role"``) and a text (``"value"`` or ``"content"``), as in ShareGPT / OpenAI messages.

How turns are joined (the tokenizer's conventions):

- the tokenizer has a chat template: the messages (roles mapped by :data:`ROLES`; plain
  strings alternate ``user``/``assistant``) are rendered with it
  (``apply_chat_template(messages, tokenize=False)``) and encoded without adding special
  tokens, as ``apply_chat_template(..., tokenize=True)`` does;
- otherwise: the turn texts joined by :data:`PLAIN_SEPARATOR` (a blank line), roles dropped,
  encoded as ``tok(text).input_ids``.

Then EOS is appended (unless the ids already end with it) and, with ``max_length``, the
sequence is truncated keeping its EOS. Each sequence is one document.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lqs_megatron.data.datasets.indexed import optimal_dtype
from lqs_megatron.data.preprocess.jsonl import ON_ERROR, BadLine, get_field, iter_records
from lqs_megatron.data.preprocess.sharding import plan_inputs
from lqs_megatron.data.preprocess.tokenize import default_workers, finish_stats, flatten, write_batches
from lqs_megatron.data.tokenizers.fingerprint import identity
from lqs_megatron.data.tokenizers.tokenizer import BatchEncoder, check_round_trip, vocab_size
from lqs_megatron.errors import LQSError
from lqs_megatron.options import internal, option
from lqs_megatron.utils.lock import output_lock

PLAIN_SEPARATOR = "\n\n"
"""Between turns when the tokenizer has no chat template."""

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
"""Role names of the common formats -> chat-template roles (others are passed through)."""


def parse_turns(value: Any, name: str, path: str | None = None, line: int | None = None) -> list[dict]:
    """A conversation field -> ``[{"role": ..., "content": ...}]``; :class:`BadLine` if malformed."""
    if not isinstance(value, list):
        got = "a string" if isinstance(value, str) else type(value).__name__
        raise BadLine(
            "not_list",
            f'field {name!r} must be a list of turns (strings or {{"from"/"role", "value"/"content"}} objects), '
            f"got {got}",
            path,
            line,
        )
    if not value:
        raise BadLine("empty", f"field {name!r} is an empty conversation (expected at least one turn)", path, line)
    messages = []
    for i, turn in enumerate(value):
        role = None
        if isinstance(turn, dict):
            text = turn.get("value", turn.get("content"))
            role = turn.get("from", turn.get("role"))
            if text is None:
                raise BadLine("missing_field", f'turn {i} of {name!r} has no "value" or "content"', path, line)
            if role is not None and not isinstance(role, str):
                raise BadLine("not_string", f"turn {i} of {name!r}: the role must be a string", path, line)
        else:
            text = turn
        if not isinstance(text, str):
            raise BadLine("not_string", f"turn {i} of {name!r} must be a string or a role/text object", path, line)
        if role is None:
            role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": ROLES.get(role.lower(), role), "content": text})
    if all(not m["content"].strip() for m in messages):
        raise BadLine("empty", f"every turn of {name!r} is empty", path, line)
    return messages


@dataclass
class TargetConfig:
    """What ``lqs tokenize-target`` does; every field is one flag."""

    inputs: list[str] = option(flag="--input", metavar="FILE")
    """``--input``: files (jsonl, parquet, arrow), directories or glob patterns (quote them), read in order."""
    field: str = option(flag_default="conversations")
    """``--field``: the JSON field holding the list of turns."""
    tokenizer_dir: str = option(flag="--tokenizer", metavar="TOKENIZER_DIR")
    """``--tokenizer``: a local Hugging Face tokenizer directory (with an EOS token)."""
    out_prefix: str = option(flag="--out", metavar="PREFIX")
    """``--out``: the output ``PREFIX``."""
    max_length: int | None = option(None, metavar="L")
    """``--max-length``: truncate longer conversations to L tokens (EOS kept)."""
    workers: int | None = None
    """``--workers``: encoding processes (0: in the main process; default: one per core, at most 32)."""
    on_error: str = option("fail", choices=ON_ERROR)
    """``--on-error``: ``fail`` at the first bad line (file:line, exit 1), or ``skip`` (count and report) them."""
    batch_lines: int = internal(256)
    """Lines per batch handed to a worker."""
    progress: bool = internal(True)
    """Show progress."""

    def __post_init__(self):
        if isinstance(self.inputs, (str, os.PathLike)):
            self.inputs = [self.inputs]
        self.inputs = [os.fspath(p) for p in self.inputs]
        self.tokenizer_dir, self.out_prefix = os.fspath(self.tokenizer_dir), os.fspath(self.out_prefix)
        if self.on_error not in ON_ERROR:
            raise LQSError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.max_length is not None and self.max_length < 2:
            raise LQSError(f"--max-length must be at least 2, got {self.max_length}")
        if self.workers is None:
            self.workers = default_workers()
        if self.workers < 0:
            raise LQSError(f"--workers must be >= 0, got {self.workers}")


class EncodeConversations:
    """The worker's job: one batch of raw lines -> an ``EncodedBatch`` of conversations."""

    def __init__(self, config: TargetConfig, dtype: np.dtype, eos: int):
        self.encoder = BatchEncoder(config.tokenizer_dir)
        self.field, self.on_error, self.max_length = config.field, config.on_error, config.max_length
        self.dtype, self.eos = np.dtype(dtype), eos

    def render(self, messages: list[dict], path: str, n: int) -> str:
        tok = self.encoder.tok
        if not tok.chat_template:
            return PLAIN_SEPARATOR.join(m["content"] for m in messages)
        try:
            return tok.apply_chat_template(messages, tokenize=False)
        except Exception as e:  # jinja raises on e.g. roles that do not alternate
            raise BadLine("template", f"the chat template rejects this conversation: {e}", path, n) from None

    def __call__(self, task):
        path, nums, rows = task
        texts, skipped = [], []
        for n, obj in iter_records(path, nums, rows, self.on_error, skipped.append):
            try:
                messages = parse_turns(get_field(obj, self.field, path, n), self.field, path, n)
                texts.append(self.render(messages, path, n))
            except BadLine as e:
                if self.on_error == "fail":
                    raise
                skipped.append(e)
        plain = not self.encoder.tok.chat_template
        out = flatten(self.encoder.encode(texts, add_special_tokens=plain), self.eos, self.max_length, self.dtype)
        out.skipped, out.chars = skipped, sum(map(len, texts))
        return out


def _first_rendered(config: TargetConfig, plan, conv: EncodeConversations):
    """``(file:line, text)`` of the first well-formed conversations as they are encoded (for the round trip)."""
    for path, nums, rows in plan.batches([config.field], config.batch_lines, 1 << 20):
        for n, obj in iter_records(path, nums, rows, "skip", skip=lambda e: None):
            try:
                messages = parse_turns(get_field(obj, config.field, path, n), config.field, path, n)
            except BadLine:
                continue
            yield f"{path}:{n}", conv.render(messages, path, n)


def tokenize_target(config: TargetConfig) -> dict:
    """Run ``lqs tokenize-target``; return the statistics (also in ``PREFIX.stats.json``). The output is locked."""
    inputs = {"--input": config.inputs, "--tokenizer": config.tokenizer_dir}
    with output_lock(config.out_prefix, step="tokenize-target", inputs=inputs):
        return _tokenize_target(config)


def _tokenize_target(config: TargetConfig) -> dict:
    t0 = time.perf_counter()
    encoder = BatchEncoder(config.tokenizer_dir)
    tok = encoder.tok
    eos, vocab = encoder.eos_token_id, vocab_size(tok)
    dtype = optimal_dtype(vocab)
    plan = plan_inputs(config.inputs, None)
    files = plan.files
    round_trip = check_round_trip(
        tok, _first_rendered(config, plan, EncodeConversations(config, dtype, eos)), config.tokenizer_dir
    )
    counts, skipped = write_batches(
        EncodeConversations(config, dtype, eos),
        plan.batches([config.field], config.batch_lines, 1 << 20),
        config.workers,
        config.out_prefix,
        dtype,
        desc=f"tokenize-target {os.path.basename(config.out_prefix)}",
        progress=config.progress,
    )
    counts["seconds"] = time.perf_counter() - t0  # the whole run, set-up included
    extra = {
        "format": "chat_template" if tok.chat_template else f"plain (turns joined by {PLAIN_SEPARATOR!r})",
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_token_id": eos,
        "tokenizer": identity(tok, config.tokenizer_dir),
        "round_trip": round_trip,
        "files": files,
        "args": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
    return finish_stats("tokenize-target", config.out_prefix, counts, skipped, extra)
