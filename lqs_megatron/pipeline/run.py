"""Run a whole pipeline config: plan, execute (resuming), report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from lqs_megatron.pipeline.config import PipelineConfig, dump_config
from lqs_megatron.pipeline.plan import Plan
from lqs_megatron.pipeline.results import collect, format_table
from lqs_megatron.pipeline.runner import Runner
from lqs_megatron.utils.atomic import atomic_file, save_json

logger = logging.getLogger(__name__)


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) every step of ``cfg``; write ``pipeline.yaml`` and ``results.json``; return the results."""
    plan = Plan(cfg)
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(cfg.workdir) / "pipeline.yaml") as tmp:
        tmp.write_text(dump_config(cfg))
    runner = Runner(cfg.workdir, cfg.launch.nproc_per_node, cfg.launch.torchrun_args)
    steps = plan.steps()
    echo(f"pipeline: {len(steps)} steps in {cfg.workdir} (logs in {runner.logs})")
    t0 = time.time()
    runner.run(steps, echo=echo)
    results = collect(plan, runner, cfg.data.labels)
    results["seconds"] = time.time() - t0
    save_json(Path(cfg.workdir) / "results.json", results)
    echo("")
    echo(format_table(results))
    return results
