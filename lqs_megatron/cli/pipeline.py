"""`lqs pipeline` and `lqs demo`: every step from raw jsonl to a pretrained, evaluated model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run every step from raw jsonl to pretrained, evaluated models (resumable)",
        description=(
            "Run the whole chain named by a YAML config: tokenize, annotation model, target data, proxy sample, "
            "annotate (LQS and/or PDS), prepare scorer data, train scorer, score the corpus, select, order, "
            "pretrain one model per arm (plus a random-selection baseline) and evaluate each on the target set. "
            "Each step is the public `lqs` command (its command line and output are in WORKDIR/logs/); a step "
            "whose outputs are complete is reused, so rerunning a stopped pipeline resumes at the first "
            "unfinished step. See docs/pipeline.md for the config keys."
        ),
    )
    p.add_argument("--config", required=True, help="pipeline YAML (relative paths resolve against its directory)")
    p.add_argument("--workdir", help="override the config's workdir")
    p.set_defaults(func=_pipeline)

    d = sub.add_parser(
        "demo",
        help="the whole pipeline on a corpus built from Python's own text (offline, minutes on 2 CPU cores)",
        description=(
            "Build a small corpus from the standard library's docstrings and pydoc topics, with labelled degraded "
            "copies, and a target set of clean explanatory conversations; then run `lqs pipeline` with the "
            "embedded demo config (lqs_megatron/pipeline/demo.yaml). Ends with a table: target loss of a model "
            "pretrained on a random selection versus the LQS and PDS top-r selections in folding order (same "
            "tokens, same steps), and the AUC of the scores for clean versus degraded documents. Rerunning "
            "with the same --workdir reuses finished steps."
        ),
    )
    d.add_argument("--workdir", default="lqs_demo", help="where everything is written (default: ./lqs_demo)")
    d.add_argument("--config", help="a YAML whose keys override the embedded demo config")
    d.set_defaults(func=_demo)


def _pipeline(args) -> int:
    from lqs_megatron.pipeline.config import load_config  # noqa: PLC0415
    from lqs_megatron.pipeline.run import run_pipeline  # noqa: PLC0415

    cfg = load_config(args.config)
    if args.workdir:
        import os  # noqa: PLC0415

        cfg.workdir = os.path.abspath(args.workdir)
    run_pipeline(cfg)
    return 0


def _demo(args) -> int:
    from lqs_megatron.pipeline.demo import run_demo  # noqa: PLC0415

    run_demo(args.workdir, args.config)
    return 0
