"""`lqs` subcommands of the data area: train-tokenizer, tokenize, tokenize-target, retokenize.

(See lqs_megatron/cli/__init__.py for the conventions; docs/data.md for the formats.)
"""

from __future__ import annotations

import argparse


class FMT(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _inputs(p: argparse.ArgumentParser, field_default: str, field_help: str) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="jsonl files (plain, .gz or .zst) or glob patterns (quote them), read in the order given",
    )
    p.add_argument("--field", default=field_default, help=field_help)


def _workers_and_errors(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="encoding processes (0: encode in the main process; default: one per core, at most 32); "
        "the output does not depend on it",
    )
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad input lines: fail with file:line and exit 1 (no output), or skip, count and report them",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "train-tokenizer",
        help="train a sentencepiece BPE tokenizer on a jsonl corpus",
        description="Train a lossless sentencepiece BPE tokenizer (byte fallback, ids: pad 0, unk 1, bos 2, "
        "eos 3) on the texts of jsonl files, saved as a directory transformers.AutoTokenizer loads offline.",
        formatter_class=FMT,
    )
    _inputs(p, "text", "the JSON field holding the text")
    p.add_argument("--vocab-size", type=int, required=True, help="number of pieces, special ones included")
    p.add_argument("--out", required=True, metavar="TOKENIZER_DIR", help="output directory (replaced atomically)")
    p.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail", help="bad input lines: fail, or skip and count them"
    )
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser(
        "tokenize",
        help="jsonl corpus -> Megatron indexed dataset (.bin/.idx)",
        description="Tokenize jsonl documents into a Megatron indexed dataset PREFIX.bin/.idx (plus "
        "PREFIX.stats.json), streaming with flat memory. Each document becomes tok(text).input_ids + [EOS]. "
        "Written under a temporary name and renamed only when complete.",
        formatter_class=FMT,
    )
    _inputs(p, "text", "the JSON field holding the document text")
    p.add_argument("--tokenizer", required=True, metavar="TOKENIZER_DIR", help="local Hugging Face tokenizer dir")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output prefix: writes PREFIX.bin and PREFIX.idx")
    p.add_argument(
        "--mode",
        choices=("document", "chunk"),
        default="document",
        help="document: one sequence per document; chunk: documents concatenated and cut into chunks of at most "
        "--max-length tokens, at sentence ends where possible (PDS/DELT style)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="L",
        help="document mode: truncate longer documents to L tokens, EOS kept; chunk mode (required): the chunk "
        "size, e.g. 1025",
    )
    _workers_and_errors(p)
    p.add_argument(
        "--no-word-cache",
        action="store_true",
        help="encode whole documents with the tokenizer's backend instead of the word cache (same ids; "
        "the cache applies to sentencepiece-style BPE and is several times faster, see docs/data.md)",
    )
    p.add_argument(
        "--keep-fields",
        metavar="F1,F2",
        default=None,
        help="input fields to keep beside the tokens (e.g. source,url): PREFIX.meta.jsonl, one JSON object per "
        "sequence (null where a record lacks the field; chunk mode: the fields of the document the chunk starts "
        "in); carried by sample-proxy, select, order and merge",
    )
    p.set_defaults(func=_tokenize)

    p = sub.add_parser(
        "tokenize-target",
        help="LIMA-style conversations (jsonl) -> indexed dataset, one sequence per conversation",
        description="Tokenize conversations (a list of turns per line: strings, or {from/role, value/content} "
        "objects) into an indexed dataset, one sequence per conversation: the tokenizer's chat template if it "
        "has one, else the turns joined by a blank line; EOS at the end.",
        formatter_class=FMT,
    )
    _inputs(p, "conversations", "the JSON field holding the list of turns")
    p.add_argument("--tokenizer", required=True, metavar="TOKENIZER_DIR", help="local Hugging Face tokenizer dir")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output prefix")
    p.add_argument("--max-length", type=int, default=None, metavar="L", help="truncate to L tokens, EOS kept")
    _workers_and_errors(p)
    p.set_defaults(func=_tokenize_target)

    p = sub.add_parser(
        "retokenize",
        help="indexed dataset from tokenizer A -> the same data with tokenizer B",
        description="Decode every EOS-delimited segment with the source tokenizer and re-encode it with the "
        "destination tokenizer; EOS stays at the same segment ends, sequences and documents are kept.",
        formatter_class=FMT,
    )
    p.add_argument("--data", required=True, metavar="PREFIX", help="input dataset prefix")
    p.add_argument("--src-tokenizer", required=True, metavar="TOKENIZER_DIR", help="tokenizer of the input")
    p.add_argument("--dst-tokenizer", required=True, metavar="TOKENIZER_DIR", help="tokenizer of the output")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output prefix")
    p.add_argument(
        "--workers", type=int, default=None, help="processes (0: in the main process; default: one per core)"
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
    from lqs_megatron.data.jsonl import SkipLog, read_texts
    from lqs_megatron.data.train_tokenizer import train_tokenizer

    skipped = SkipLog()
    texts = (t for _, _, t in read_texts(args.input, args.field, on_error=args.on_error, skipped=skipped))
    out = train_tokenizer(texts, args.out, vocab_size=args.vocab_size)
    msg = f"wrote tokenizer {out} ({args.vocab_size} pieces)"
    if skipped.total:
        msg += f"; skipped {skipped.total} bad lines {skipped.counts}"
    print(msg)
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from lqs_megatron.data.tokenize import TokenizeConfig, tokenize

    cfg = TokenizeConfig(
        inputs=args.input,
        field=args.field,
        tokenizer_dir=args.tokenizer,
        out_prefix=args.out,
        mode=args.mode,
        max_length=args.max_length,
        workers=args.workers,
        on_error=args.on_error,
        word_cache=not args.no_word_cache,
        keep_fields=args.keep_fields,
    )
    _report(tokenize(cfg))
    return 0


def _tokenize_target(args: argparse.Namespace) -> int:
    from lqs_megatron.data.conversations import TargetConfig, tokenize_target

    cfg = TargetConfig(
        inputs=args.input,
        field=args.field,
        tokenizer_dir=args.tokenizer,
        out_prefix=args.out,
        max_length=args.max_length,
        workers=args.workers,
        on_error=args.on_error,
    )
    _report(tokenize_target(cfg))
    return 0


def _retokenize(args: argparse.Namespace) -> int:
    from lqs_megatron.data.retokenize import RetokenizeConfig, retokenize

    cfg = RetokenizeConfig(
        data=args.data,
        src_tokenizer=args.src_tokenizer,
        dst_tokenizer=args.dst_tokenizer,
        out_prefix=args.out,
        workers=args.workers,
    )
    _report(retokenize(cfg))
    return 0
