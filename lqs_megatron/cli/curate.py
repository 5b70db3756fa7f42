"""`lqs` subcommands of the curate area: select, order.

See lqs_megatron/cli/__init__.py for the conventions; definitions are in
:mod:`lqs_megatron.curate.selection` / :mod:`lqs_megatron.curate.ordering` and
``docs/curation.md``.
"""

from __future__ import annotations

import argparse
import json

from lqs_megatron.cli.options import build, flags, new_command

_IO_HELP = (
    "Input is an indexed dataset PREFIX with --scores FILE.npy (one finite score per sequence), or a jsonl "
    "file (FILE.jsonl[.gz|.zst], detected by extension) whose records carry the score in --score-field (or "
    "take it from --scores). Output: OUT.bin/.idx (each kept sequence its own document), OUT.scores.npy "
    "(kept scores in output order) and OUT.indices.npy (their positions in the input); for jsonl input "
    "OUT.jsonl plus the same sidecars named without .jsonl. --view: OUT.view.json instead of OUT.bin/.idx "
    "(no tokens copied; read wherever a dataset is read; lqs materialize writes the copy)."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``; the flags come from curate/config.py."""
    p = new_command(
        sub,
        "select",
        help="keep the best sequences by score (top-r, top-k, threshold)",
        description="Keep sequences by score (higher is better); kept sequences stay in input order; ties at "
        "the cut go to the lower index. top-r keeps floor(r*N), top-k keeps k, threshold keeps score >= X. " + _IO_HELP,
        setup=flags("lqs_megatron.curate.config", "SelectConfig"),
    )
    p.set_defaults(func=_select)

    p = new_command(
        sub,
        "order",
        help="order sequences by score (folding, sorting, shuffle, zigzag, stair, saw, segment; --jitter)",
        description="Reorder all sequences. folding (DELT): sort by score ascending, then L passes, pass l "
        "taking every L-th sequence from position l. sorting: ascending (--descending). shuffle: seeded "
        "permutation. zigzag: folding with odd passes reversed. stair/saw: sorted with folded/zigzagged "
        "transition regions around sections-1 split points. segment: a front and a back segment from the low or "
        "high scores, the rest in the middle, each shuffled. --jitter W (any method): then shuffle within "
        "consecutive windows of W positions. Equal scores keep index order. " + _IO_HELP,
        setup=flags("lqs_megatron.curate.config", "OrderConfig"),
    )
    p.set_defaults(func=_order)


def _run(cfg, choose, step: str) -> int:
    from lqs_megatron.curate.apply import curate_dataset, curate_jsonl, is_jsonl
    from lqs_megatron.errors import LQSError
    from lqs_megatron.utils.lock import output_lock

    if not is_jsonl(cfg.data) and cfg.scores is None:
        raise LQSError("--scores FILE.npy is required when --data is an indexed dataset")
    if cfg.view and (is_jsonl(cfg.data) or is_jsonl(cfg.out)):
        raise LQSError("--view is for indexed datasets; jsonl input is written as jsonl")
    inputs = {"--data": cfg.data, "--scores": cfg.scores}
    with output_lock(cfg.out, step=step, inputs=inputs, kind="file" if is_jsonl(cfg.out) else "prefix"):
        if is_jsonl(cfg.data):
            info = curate_jsonl(cfg.data, cfg.out, choose, cfg.scores, cfg.score_field)
        else:
            info = curate_dataset(cfg.data, cfg.scores, cfg.out, choose, step, view=cfg.view)
    print(json.dumps(info))
    return 0


def _select(args: argparse.Namespace) -> int:
    from lqs_megatron.curate.config import SelectConfig
    from lqs_megatron.curate.selection import select

    cfg = build(SelectConfig, args)  # checks the method's parameter
    return _run(cfg, lambda scores: select(scores, cfg.method, **cfg.params), "select")


def _order(args: argparse.Namespace) -> int:
    from lqs_megatron.curate.config import OrderConfig
    from lqs_megatron.curate.ordering import order

    cfg = build(OrderConfig, args)  # checks the parameters against the method
    return _run(cfg, lambda scores: order(scores, cfg.method, cfg.jitter, **cfg.params), "order")
