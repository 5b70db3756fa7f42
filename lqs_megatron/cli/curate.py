"""`lqs` subcommands of the curate area: select, order.

See lqs_megatron/cli/__init__.py for the conventions; definitions are in
:mod:`lqs_megatron.curate.selection` / :mod:`lqs_megatron.curate.ordering` and
``docs/curation.md``.
"""

from __future__ import annotations

import argparse
import json


class FMT(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


SELECT_METHODS = ("top-r", "top-k", "threshold")
SELECT_PARAMS = {"top-r": "r", "top-k": "k", "threshold": "threshold"}
ORDER_METHODS = ("folding", "sorting", "shuffle", "zigzag", "stair", "saw")
ORDER_FLAGS = ("layers", "sections", "transition_ratio", "descending", "seed")

_IO_HELP = (
    "Input is an indexed dataset PREFIX with --scores FILE.npy (one finite score per sequence), or a jsonl "
    "file (FILE.jsonl[.gz|.zst], detected by extension) whose records carry the score in --score-field (or "
    "take it from --scores). Output: OUT.bin/.idx (each kept sequence its own document), OUT.scores.npy "
    "(kept scores in output order) and OUT.indices.npy (their positions in the input); for jsonl input "
    "OUT.jsonl plus the same sidecars named without .jsonl."
)


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PREFIX|FILE.jsonl", help="input dataset prefix or jsonl file")
    p.add_argument("--scores", metavar="FILE.npy", help="scores (required for a dataset, optional for jsonl)")
    p.add_argument("--out", required=True, metavar="PREFIX|FILE.jsonl", help="output prefix (or .jsonl for jsonl)")
    p.add_argument("--score-field", default="score", help="score field of jsonl records")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "select",
        help="keep the best sequences by score (top-r, top-k, threshold)",
        description="Keep sequences by score (higher is better); kept sequences stay in input order; ties at "
        "the cut go to the lower index. top-r keeps floor(r*N), top-k keeps k, threshold keeps score >= X. " + _IO_HELP,
        formatter_class=FMT,
    )
    _add_io(p)
    p.add_argument("--method", required=True, choices=SELECT_METHODS, help="selection method")
    p.add_argument("--r", type=float, help="top-r: fraction to keep, in [0, 1]")
    p.add_argument("--k", type=int, help="top-k: number to keep, in [0, N]")
    p.add_argument("--threshold", type=float, help="threshold: keep scores >= this")
    p.set_defaults(func=_select)

    p = sub.add_parser(
        "order",
        help="order sequences by score (folding, sorting, shuffle, zigzag, stair, saw)",
        description="Reorder all sequences. folding (DELT): sort by score ascending, then L passes, pass l "
        "taking every L-th sequence from position l. sorting: ascending (--descending). shuffle: seeded "
        "permutation. zigzag: folding with odd passes reversed. stair/saw: sorted with folded/zigzagged "
        "transition regions around sections-1 split points. Equal scores keep index order. " + _IO_HELP,
        formatter_class=FMT,
    )
    _add_io(p)
    p.add_argument("--method", required=True, choices=ORDER_METHODS, help="ordering method")
    p.add_argument("--layers", type=int, help="folding/zigzag/stair/saw: passes L (default: 3, 5, 3, 2)")
    p.add_argument("--sections", type=int, help="stair/saw: number of sections (default: 2, 3)")
    p.add_argument("--transition-ratio", type=float, help="stair/saw: region radius / N (default: 0.225, 0.075)")
    p.add_argument("--descending", action="store_const", const=True, help="score-based methods: high scores first")
    p.add_argument("--seed", type=int, help="shuffle: random seed (default: 0)")
    p.set_defaults(func=_order)


def _run(args: argparse.Namespace, choose) -> int:
    from lqs_megatron.curate.apply import curate_dataset, curate_jsonl, is_jsonl  # noqa: PLC0415
    from lqs_megatron.errors import LQSError  # noqa: PLC0415

    if is_jsonl(args.data):
        info = curate_jsonl(args.data, args.out, choose, args.scores, args.score_field)
    else:
        if args.scores is None:
            raise LQSError("--scores FILE.npy is required when --data is an indexed dataset")
        info = curate_dataset(args.data, args.scores, args.out, choose)
    print(json.dumps(info))
    return 0


def _select(args: argparse.Namespace) -> int:
    from lqs_megatron.curate.selection import select  # noqa: PLC0415
    from lqs_megatron.errors import LQSError  # noqa: PLC0415

    needed = SELECT_PARAMS[args.method]
    for method, name in SELECT_PARAMS.items():
        if method != args.method and getattr(args, name) is not None:
            raise LQSError(f"--{name} is for --method {method}, not {args.method}")
    value = getattr(args, needed)
    if value is None:
        raise LQSError(f"--method {args.method} needs --{needed}")
    return _run(args, lambda scores: select(scores, args.method, **{needed: value}))


def _order(args: argparse.Namespace) -> int:
    import inspect  # noqa: PLC0415

    from lqs_megatron.curate.ordering import ORDERINGS, order  # noqa: PLC0415
    from lqs_megatron.errors import LQSError  # noqa: PLC0415

    accepted = set(inspect.signature(ORDERINGS[args.method]).parameters) - {"scores"}
    params = {}
    for name in ORDER_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in accepted:
            raise LQSError(f"--{name.replace('_', '-')} does not apply to --method {args.method}")
        params[name] = value
    return _run(args, lambda scores: order(scores, args.method, **params))
