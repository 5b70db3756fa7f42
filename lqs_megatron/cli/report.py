"""`lqs report`: score statistics per group, the top and bottom examples as text, correlations, a PNG
(see lqs_megatron/cli/__init__.py for the conventions; the work is in :mod:`lqs_megatron.lqs.report`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "report",
        help="where the scores come from: statistics per source, best and worst examples, a PNG",
        description="Report on a score file aligned with an indexed dataset (an annotation's raw_scores.npy or "
        "scores.npy over the proxy set, or `lqs score`'s scores.npy over a corpus): score statistics overall and "
        "per group of a sidecar field (--by source reads PREFIX.meta.jsonl, written by `lqs tokenize "
        "--keep-fields source,...`), the top and bottom examples as text, the Spearman correlations of the scores "
        "with the sequence length and the example's own loss (an annotation's example_loss.npy beside the scores, "
        "or --losses), and a PNG. Prints the report and writes OUT.txt, OUT.json and OUT.png.",
    )
    p.add_argument("--scores", required=True, metavar="S.npy", help="one score per sequence of --data (.npy)")
    p.add_argument("--data", required=True, metavar="PREFIX", help="the indexed dataset the scores belong to")
    p.add_argument("--by", default=None, metavar="FIELD", help="group by this field of PREFIX.meta.jsonl")
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="TOKENIZER_DIR",
        help="decode the examples with this tokenizer (default: the one PREFIX.stats.json records)",
    )
    p.add_argument(
        "--losses", default=None, metavar="L.npy", help="each sequence's own loss (default: example_loss.npy beside S)"
    )
    p.add_argument("--top", type=int, default=5, metavar="K", help="top and bottom examples shown (default: 5)")
    p.add_argument("--chars", type=int, default=300, help="characters of text per example (default: 300)")
    p.add_argument("--out", default=None, metavar="OUT", help="output prefix (default: S without .npy + .report)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from lqs_megatron.errors import LQSError  # noqa: PLC0415
    from lqs_megatron.lqs.report import format_report, write_report  # noqa: PLC0415

    if args.top < 0 or args.chars < 10:
        raise LQSError(f"--top must be >= 0 and --chars >= 10, got {args.top} and {args.chars}")
    out = args.out or (args.scores[:-4] if args.scores.endswith(".npy") else args.scores) + ".report"
    rep = write_report(
        out, args.scores, args.data, by=args.by, tokenizer=args.tokenizer, losses=args.losses, top=args.top,
        chars=args.chars,
    )  # fmt: skip
    print(format_report(rep))
    print(f"\nwrote {', '.join(rep['files'])}")
    return 0
