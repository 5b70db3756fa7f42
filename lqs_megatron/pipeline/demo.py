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

from lqs_megatron.errors import LQSError
from lqs_megatron.options import check_mapping, read_yaml
from lqs_megatron.pipeline.config import PipelineConfig, config_from_dict
from lqs_megatron.pipeline.run import run_pipeline

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_demo_inputs(corpus_dir: Path) -> dict:
    """Build the demo corpus into ``corpus_dir``, replacing only files whose bytes changed."""
    from lqs_megatron.demo.corpus import build_demo_corpus

    corpus_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=corpus_dir.parent, prefix=".demo-build-") as tmp:
        manifest = build_demo_corpus(tmp)
        for name in sorted(os.listdir(tmp)):
            new, old = Path(tmp) / name, corpus_dir / name
            if not (old.is_file() and filecmp.cmp(new, old, shallow=False)):
                shutil.copy2(new, f"{old}.tmp")
                os.replace(f"{old}.tmp", old)
    return {k: str(corpus_dir / Path(v).name) for k, v in manifest["paths"].items()} | {"counts": manifest["counts"]}


def load_override(path: str) -> dict:
    """The keys of a ``lqs demo --config`` file, checked (names and types) against the pipeline config,
    so that a mistake is blamed on that file, not on the embedded demo.yaml."""
    if not os.path.isfile(path):
        raise LQSError(f"demo config override {path!r} does not exist")
    data = read_yaml(path) or {}
    check_mapping(PipelineConfig, data, path)
    return data


def demo_config(workdir: str | os.PathLike, override_path: str | None = None) -> tuple[dict, dict]:
    """The demo's pipeline config dict (paths filled in) and the corpus manifest paths."""
    override = load_override(override_path) if override_path else {}  # a bad key fails before any work
    workdir = Path(workdir).resolve()
    inputs = build_demo_inputs(workdir / "corpus")
    data = _merge(read_yaml(DEMO_CONFIG), override)
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
    where = f"{override_path} (over {DEMO_CONFIG.name})" if override_path else str(DEMO_CONFIG)
    cfg = config_from_dict(data, Path(workdir).resolve(), where=where)
    return run_pipeline(cfg, echo=echo)
