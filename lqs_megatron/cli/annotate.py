"""`lqs` subcommands of the annotate area: annotate (see lqs_megatron/cli/__init__.py for the conventions).

The flags come from :class:`lqs_megatron.lqs.config.AnnotateConfig`; the work is done by
:mod:`lqs_megatron.lqs.annotate`; docs/annotation.md explains the method.
"""

from __future__ import annotations

import argparse
import json

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = new_command(
        sub,
        "annotate",
        help="LQS (or PDS) scores of the proxy set",
        description="Replay T steps of plain SGD of the model on the train stream (stored order), run the costate "
        "backward with Hessian-vector products, and score every proxy example at the steps i % K == 0 "
        "(docs/algorithm.md). Writes OUT/raw_scores.npy (float64, proxy order), OUT/scores.npy (normalised, "
        "clipped to [-3, 3]) and OUT/annotate.json. Run under torchrun for data (and --tp tensor) parallelism.",
        setup=flags("lqs_megatron.lqs.config", "AnnotateConfig"),
    )
    p.set_defaults(func=_annotate)


def _annotate(args: argparse.Namespace) -> int:
    from lqs_megatron.distributed import init_distributed
    from lqs_megatron.lqs.annotate import annotate
    from lqs_megatron.lqs.config import AnnotateConfig

    cfg = build(AnnotateConfig, args)
    dims = init_distributed(tp=cfg.tp, device=cfg.device)
    try:
        record = annotate(cfg, dims)
    finally:
        dims.close()
    if dims.is_main:
        summary = {k: record[k] for k in ("method", "num_proxy", "timings_s")}
        print(json.dumps({"out": cfg.out, **summary}))
    return 0
