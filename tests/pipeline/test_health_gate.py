"""The pipeline's annotation health gate and `annotate.lr: auto`."""

from __future__ import annotations

import json

import pytest

from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.config import config_from_dict
from lqs_megatron.pipeline.plan import Plan


def _plan(tmp_path, **annotate) -> Plan:
    data = {"workdir": "run", "data": {"corpus": ["c.jsonl"], "target": "t.jsonl"}, "annotate": annotate}
    return Plan(config_from_dict(data, tmp_path))


def _write_health(plan: Plan, method: str, ok: bool) -> None:
    d = plan.annotate_dir(method)
    d.mkdir(parents=True, exist_ok=True)
    warnings = [] if ok else [{"kind": "target_rise", "message": "the replay's target loss rose above its start"}]
    (d / "annotate.json").write_text(json.dumps({"health": {"ok": ok, "warnings": warnings}}))


def test_lr_auto_reaches_the_annotate_command(tmp_path):
    plan = _plan(tmp_path, lr="auto")
    argv = next(s.argv for s in plan.steps() if s.name == "annotate-lqs")
    assert argv[argv.index("--lr") + 1] == "auto"
    with pytest.raises(LQSError, match="annotate.lr: expected a positive number or 'auto'"):
        _plan(tmp_path, lr="fast")


def test_gate_stops_before_the_scorer_on_an_unhealthy_annotation(tmp_path):
    plan = _plan(tmp_path, methods=["lqs"])
    steps = {s.name: s for s in plan.steps()}
    gate = steps["check-annotate-lqs"]
    assert "check-annotate-lqs" in steps["prepare-scorer-data-lqs"].after and gate.after == ["annotate-lqs"]
    _write_health(plan, "lqs", ok=False)
    with pytest.raises(LQSError, match=r"lqs annotation .* is unhealthy[\s\S]*rose above[\s\S]*allow_unhealthy"):
        gate.func()
    _write_health(plan, "lqs", ok=True)
    gate.func()
    allowed = {s.name: s for s in _plan(tmp_path, methods=["lqs"], allow_unhealthy=True).steps()}
    _write_health(plan, "lqs", ok=False)
    allowed["check-annotate-lqs"].func()  # told to go on: logs, does not stop
    assert allowed["check-annotate-lqs"].func_id != gate.func_id  # switching it reruns the gate
