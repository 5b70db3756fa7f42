"""`lqs` subcommands of the data area: train-tokenizer, tokenize, tokenize-target, retokenize.

(See lqs_megatron/cli/__init__.py for the conventions; docs/data.md for the formats.)
"""

from __future__ import annotations

import argparse

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``; the flags come from each step's dataclass."""
    p = new_command(
        sub,
        "train-tokenizer",
        help="train a sentencepiece BPE tokenizer on a corpus (jsonl, parquet, arrow)",
        description="Train a lossless sentencepiece BPE tokenizer (byte fallback, ids: pad 0, unk 1, bos 2, "
        "eos 3) on the texts of the input files (jsonl, parquet, arrow), saved as a directory "
        "transformers.AutoTokenizer loads offline.",
        setup=flags("lqs_megatron.data.config", "TrainTokenizerConfig"),
    )
    p.set_defaults(func=_train_tokenizer)

    p = new_command(
        sub,
        "tokenize",
        help="corpus (jsonl, parquet, arrow) -> Megatron indexed dataset (.bin/.idx)",
        description="Tokenize documents (jsonl, parquet, arrow, datasets.save_to_disk) into a Megatron indexed "
        "dataset PREFIX.bin/.idx (plus PREFIX.stats.json), streaming with flat memory. Each document becomes "
        "tok(text).input_ids + [EOS]. Written under a temporary name and renamed only when complete; --shard "
        "runs one part of the input (join with `lqs merge --shards`).",
        setup=flags("lqs_megatron.data.preprocess.tokenize", "TokenizeConfig"),
    )
    p.set_defaults(func=_tokenize)

    p = new_command(
        sub,
        "tokenize-target",
        help="LIMA-style conversations (jsonl, parquet, arrow) -> indexed dataset, one sequence per conversation",
        description="Tokenize conversations (a list of turns per line: strings, or {from/role, value/content} "
        "objects) into an indexed dataset, one sequence per conversation: the tokenizer's chat template if it "
        "has one, else the turns joined by a blank line; EOS at the end.",
        setup=flags("lqs_megatron.data.preprocess.conversations", "TargetConfig"),
    )
    p.set_defaults(func=_tokenize_target)

    p = new_command(
        sub,
        "retokenize",
        help="indexed dataset from tokenizer A -> the same data with tokenizer B",
        description="Decode every EOS-delimited segment with the source tokenizer and re-encode it with the "
        "destination tokenizer; EOS stays at the same segment ends, sequences and documents are kept.",
        setup=flags("lqs_megatron.data.preprocess.retokenize", "RetokenizeConfig"),
    )
    p.set_defaults(func=_retokenize)


def _report(stats: dict) -> None:
    skipped = stats["skipped"]["total"]
    print(
        f"wrote {stats['output']}.bin/.idx: {stats['documents']} documents, {stats['sequences']} sequences, "
        f"{stats['tokens']} tokens ({stats['docs_per_s']:.0f} docs/s, {stats['tokens_per_s']:.0f} tokens/s)"
        + (f"; skipped {skipped} bad lines {stats['skipped']['by_reason']}" if skipped else "")
        + (f"; provenance in {stats['meta']}" if stats.get("meta") else "")
        + f"; stats in {stats['output']}.stats.json"
    )


def _train_tokenizer(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import TrainTokenizerConfig
    from lqs_megatron.data.preprocess.jsonl import SkipLog, read_texts
    from lqs_megatron.data.tokenizers.tokenizer import TOKENIZER_DIR_FILES
    from lqs_megatron.data.tokenizers.train_tokenizer import train_tokenizer
    from lqs_megatron.utils.lock import output_lock

    cfg = build(TrainTokenizerConfig, args)

    class Texts:  # re-readable: a vocabulary too small for every character takes a second pass
        skipped = SkipLog()

        def __iter__(self):
            self.skipped = SkipLog()  # each pass counts the bad lines afresh
            return (t for _, _, t in read_texts(cfg.inputs, cfg.field, on_error=cfg.on_error, skipped=self.skipped))

    texts = Texts()
    rule = {"inputs": {"--input": cfg.inputs}, "kind": "dir", "known": TOKENIZER_DIR_FILES}
    with output_lock(cfg.out, step="train-tokenizer", **rule):
        out = train_tokenizer(texts, cfg.out, vocab_size=cfg.vocab_size, character_coverage=cfg.character_coverage)
    msg = f"wrote tokenizer {out} ({cfg.vocab_size} pieces)"
    skipped = texts.skipped
    if skipped.total:
        msg += f"; skipped {skipped.total} bad lines {skipped.counts}"
    print(msg)
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from lqs_megatron.data.preprocess.sharding import resolve_shard
    from lqs_megatron.data.preprocess.tokenize import TokenizeConfig, tokenize

    _report(tokenize(build(TokenizeConfig, args, shard=resolve_shard(args.shard))))
    return 0


def _tokenize_target(args: argparse.Namespace) -> int:
    from lqs_megatron.data.preprocess.conversations import TargetConfig, tokenize_target

    _report(tokenize_target(build(TargetConfig, args)))
    return 0


def _retokenize(args: argparse.Namespace) -> int:
    from lqs_megatron.data.preprocess.retokenize import RetokenizeConfig, retokenize
    from lqs_megatron.data.preprocess.sharding import resolve_shard

    _report(retokenize(build(RetokenizeConfig, args, shard=resolve_shard(args.shard))))
    return 0
