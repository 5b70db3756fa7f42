"""``lqs demo``: the pipeline on a corpus built from Python's own text, offline.

The corpus (:mod:`lqs_megatron.demo.corpus`) is rebuilt on every call, but files whose
bytes did not change are left in place, so their timestamps hold and a rerun in the same
workdir reuses every finished step.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.config import config_from_dict
from lqs_megatron.pipeline.run import run_pipeline

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_demo_inputs(corpus_dir: Path) -> dict:
    """Build the demo corpus into ``corpus_dir``, replacing only files whose bytes changed."""
    from lqs_megatron.demo.corpus import build_demo_corpus  # noqa: PLC0415

    corpus_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=corpus_dir.parent, prefix=".demo-build-") as tmp:
        manifest = build_demo_corpus(tmp)
        for name in sorted(os.listdir(tmp)):
            new, old = Path(tmp) / name, corpus_dir / name
            if not (old.is_file() and filecmp.cmp(new, old, shallow=False)):
                shutil.copy2(new, f"{old}.tmp")
                os.replace(f"{old}.tmp", old)
    return {k: str(corpus_dir / Path(v).name) for k, v in manifest["paths"].items()} | {"counts": manifest["counts"]}


def demo_config(workdir: str | os.PathLike, override_path: str | None = None) -> tuple[dict, dict]:
    """The demo's pipeline config dict (paths filled in) and the corpus manifest paths."""
    workdir = Path(workdir).resolve()
    inputs = build_demo_inputs(workdir / "corpus")
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    if override_path:
        if not os.path.isfile(override_path):
            raise LQSError(f"demo config override {override_path!r} does not exist")
        data = _merge(data, yaml.safe_load(Path(override_path).read_text()) or {})
    data["workdir"] = str(workdir)
    data["data"] = {
        **data["data"],
        "corpus": [inputs["corpus"]],
        "target": inputs["target"],
        "labels": inputs["labels"],
    }
    return data, inputs


def run_demo(workdir: str | os.PathLike, override_path: str | None = None, echo: Callable[[str], None] = print):
    data, inputs = demo_config(workdir, override_path)
    c = inputs["counts"]
    echo(
        f"demo corpus: {c['total']} documents ({c['clean']} clean, {c['degraded']} degraded copies), "
        f"{c['target']} target conversations, from Python's own docs (nothing downloaded)"
    )
    cfg = config_from_dict(data, Path(workdir).resolve(), where=str(DEMO_CONFIG))
    return run_pipeline(cfg, echo=echo)
