"""The pipeline relays a running step's progress lines (done/total, rate, ETA) to its console."""

from __future__ import annotations

import re
import sys

import lqs_megatron.pipeline.runner as runner_mod
from lqs_megatron.pipeline.runner import Runner, Step

# a step that logs through the one Progress class as `lqs` commands do (its own interval: 60 s)
_SLOW_STEP = """
import logging, sys, time
from lqs_megatron.utils.progress import Progress
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                    datefmt="%H:%M:%S", stream=sys.stderr)
with Progress("slow phase", unit="step", total=STEPS, log_every_s=60.0) as p:
    for _ in range(STEPS):
        time.sleep(SLEEP)
        p.update(1)
print("finished")
"""


def test_a_step_longer_than_a_few_seconds_shows_progress_with_an_eta(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng()
    steps, sleep = int(rng.integers(10, 16)), float(rng.uniform(0.25, 0.35))
    monkeypatch.setenv("LQS_PROGRESS_SECONDS", "0.5")
    monkeypatch.setattr(runner_mod, "RELAY_SECONDS", 1.0)
    runner = Runner(tmp_path)
    script = _SLOW_STEP.replace("STEPS", str(steps)).replace("SLEEP", str(sleep))
    monkeypatch.setattr(runner, "command", lambda step, resume: [sys.executable, "-c", script])
    echoed: list[str] = []
    runner.run([Step("slow-step", ["slow"])], echo=echoed.append)
    relayed = [ln for ln in echoed if "ETA" in ln]
    assert len(relayed) >= 2, echoed  # about one a second over 3-5 s
    for ln in relayed:
        m = re.fullmatch(
            r"\[ 1/1\] slow-step  slow phase: (\d+)/(\d+) steps, ([\d.]+) (steps/s|s/step), ETA 0:0(\d)", ln
        )
        assert m, ln
        done, total, rate = int(m.group(1)), int(m.group(2)), float(m.group(3))
        per_s = rate if m.group(4) == "steps/s" else 1 / rate
        assert total == steps and 0 < done <= total and rate >= 1.0
        assert 0.3 / sleep < per_s < 1.05 / sleep  # the real pace of the step (sleep plus overhead, under load)
        assert abs(int(m.group(5)) - (total - done) / per_s) <= 1
    assert echoed[0].endswith("running ...") and "done in" in echoed[-1]
    assert "finished" in runner.stdout_of("slow-step")
    assert "slow phase" in (tmp_path / "logs" / "slow-step.log").read_text()  # the log keeps every line


def test_a_step_without_a_known_total_shows_its_count_and_rate(tmp_path, monkeypatch):
    """Tokenize counts documents without knowing how many there are: its lines (count and rate) are relayed too."""
    import numpy as np

    sleep = float(np.random.default_rng().uniform(0.2, 0.3))
    monkeypatch.setenv("LQS_PROGRESS_SECONDS", "0.5")
    monkeypatch.setattr(runner_mod, "RELAY_SECONDS", 1.0)
    runner = Runner(tmp_path)
    script = _SLOW_STEP.replace("total=STEPS", "unit='doc'").replace("STEPS", "12").replace("SLEEP", str(sleep))
    script = script.replace('unit="step", ', "")
    monkeypatch.setattr(runner, "command", lambda step, resume: [sys.executable, "-c", script])
    echoed: list[str] = []
    runner.run([Step("tokenize", ["tokenize"])], echo=echoed.append)
    relayed = [ln for ln in echoed if "docs/s" in ln]
    assert relayed, echoed
    for ln in relayed:
        m = re.fullmatch(r"\[ 1/1\] tokenize  slow phase: (\d+) docs, ([\d.]+) docs/s", ln)
        assert m, ln
        assert 0 < int(m.group(1)) <= 12 and 0.3 / sleep < float(m.group(2)) < 1.05 / sleep
