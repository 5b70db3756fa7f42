"""`lqs` subcommands of the annotate area: annotate, report (see lqs_megatron/cli/__init__.py for the conventions).

The flags come from :class:`lqs_megatron.lqs.config.AnnotateConfig` and ``ReportConfig``; the work
is done by :mod:`lqs_megatron.lqs.annotate` and :mod:`lqs_megatron.lqs.report`; docs/annotation.md
explains the method.
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
        "clipped to [-3, 3]), OUT/example_loss.npy (each example's loss at theta_0) and OUT/annotate.json (with a "
        "health verdict of the replay: warnings are logged; --strict makes them an error). Run under torchrun "
        "for data (and --tp tensor) parallelism.",
        setup=flags("lqs_megatron.lqs.config", "AnnotateConfig"),
    )
    p.set_defaults(func=_annotate)
    p = new_command(
        sub,
        "report",
        help="where the scores come from: statistics per source, best and worst examples, a PNG",
        description="Report on a score file aligned with an indexed dataset (an annotation's raw_scores.npy or "
        "scores.npy over the proxy set, or `lqs score`'s scores.npy over a corpus): score statistics overall and "
        "per group of a sidecar field (--by source reads PREFIX.meta.jsonl, written by `lqs tokenize "
        "--keep-fields source,...`), the top and bottom examples as text, the Spearman correlations of the scores "
        "with the sequence length and the example's own loss (an annotation's example_loss.npy beside the scores, "
        "or --losses), and a PNG. Prints the report and writes OUT.txt, OUT.json and OUT.png.",
        setup=flags("lqs_megatron.lqs.config", "ReportConfig"),
    )
    p.set_defaults(func=_report)


def _annotate(args: argparse.Namespace) -> int:
    from lqs_megatron.errors import LQSError
    from lqs_megatron.lqs.annotate import annotate, fault_hooks_from_env
    from lqs_megatron.lqs.config import AnnotateConfig
    from lqs_megatron.parallel.dims import init_distributed

    cfg = build(AnnotateConfig, args)
    dims = init_distributed(tp=cfg.tp, device=cfg.device)
    try:
        record = annotate(cfg, dims, on_scoring=fault_hooks_from_env())
    finally:
        dims.close()
    health = record["health"]
    if dims.is_main:
        summary = {k: record[k] for k in ("method", "num_proxy", "timings_s")}
        summary["lr"] = record["arguments"]["lr"]
        summary["health"] = {"ok": health["ok"], "warnings": [w["kind"] for w in health["warnings"]]}
        print(json.dumps({"out": cfg.out, **summary}))
    if cfg.strict and not health["ok"]:
        kinds = ", ".join(w["kind"] for w in health["warnings"])
        raise LQSError(f'--strict: the health check warned ({kinds}); see {cfg.out}/annotate.json "health"')
    return 0


def _report(args: argparse.Namespace) -> int:
    from lqs_megatron.lqs.config import ReportConfig
    from lqs_megatron.lqs.report import format_report, write_report
    from lqs_megatron.utils.lock import output_lock

    cfg = build(ReportConfig, args)
    inputs = {"--scores": cfg.scores, "--data": cfg.data, "--tokenizer": cfg.tokenizer, "--losses": cfg.losses}
    with output_lock(cfg.out_prefix, step="report", inputs=inputs):
        rep = write_report(
            cfg.out_prefix,
            cfg.scores,
            cfg.data,
            by=cfg.by,
            tokenizer=cfg.tokenizer,
            losses=cfg.losses,
            top=cfg.top,
            chars=cfg.chars,
        )
    print(format_report(rep))
    print(f"\nwrote {', '.join(rep['files'])}")
    return 0
