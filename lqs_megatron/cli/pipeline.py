"""`lqs pipeline` and `lqs demo`: every step from raw jsonl to a pretrained, evaluated model."""

from __future__ import annotations

import argparse

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    p = new_command(
        sub,
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
        setup=flags("lqs_megatron.pipeline.config", "PipelineCommand"),
    )
    p.set_defaults(func=_pipeline)

    d = new_command(
        sub,
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
        setup=flags("lqs_megatron.pipeline.config", "DemoCommand"),
    )
    d.set_defaults(func=_demo)


def _pipeline(args) -> int:
    import os

    from lqs_megatron.pipeline.config import PipelineCommand, load_config
    from lqs_megatron.pipeline.run import run_pipeline

    cmd = build(PipelineCommand, args)
    cfg = load_config(cmd.config)
    if cmd.workdir:
        cfg.workdir = os.path.abspath(cmd.workdir)
    run_pipeline(cfg)
    return 0


def _demo(args) -> int:
    from lqs_megatron.pipeline.config import DemoCommand
    from lqs_megatron.pipeline.demo import run_demo

    cmd = build(DemoCommand, args)
    run_demo(cmd.workdir, cmd.config)
    return 0
