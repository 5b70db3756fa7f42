"""One check for every ``--resume`` (``pretrain``, ``train-scorer``, ``annotate``): the settings the
interrupted run recorded against the ones given now.

A command names two lists of its settings (field names of its dataclass): ``fixed`` ones that the run
cannot continue under (the data order, the model's shape, the replayed trajectory), refused always,
and ``free`` ones a user may change knowingly (the learning rate, the schedule, the epochs), refused
unless ``--allow-changed-settings`` is given; then each change is logged as a warning and returned,
for the command to record in its run's metadata (``resume_changes``). A setting the saved run did not
record (a run written by an older version) is not compared. Messages name the flags and both values::

    --resume from OUT/step_00000003: --lr was 0.001, now 0.002; ... (keep the run's settings, pass
    --allow-changed-settings to continue with the new ones, or start a new --out)
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lqs_megatron.errors import LQSError
from lqs_megatron.options import flag_name, settings

logger = logging.getLogger(__name__)

ALLOW_FLAG = "--allow-changed-settings"


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples are lists, paths strings), so saved and new compare alike."""
    return json.loads(json.dumps(value, default=str))


def changed_settings(cls, saved: dict, now: dict, keys) -> list[dict]:
    """``[{"setting": FLAG, "was": old, "now": new}]`` for each of ``keys`` (settings of ``cls``, or other
    names, shown as ``--name``) whose value in ``now`` differs from ``saved``; keys ``saved`` lacks are skipped."""
    flags = {f.name: flag_name(f) for f in settings(cls)}
    out = []
    for k in keys:
        if k not in saved:
            continue
        was, new = _plain(saved[k]), _plain(now[k])
        if was != new:
            out.append({"setting": flags.get(k, "--" + k.replace("_", "-")), "was": was, "now": new})
    return out


def describe(changes: list[dict]) -> str:
    return "; ".join(f"{c['setting']} was {c['was']!r}, now {c['now']!r}" for c in changes)


def check_resume(
    source: str,
    fixed: list[dict],
    free: list[dict],
    allow: bool,
    why_fixed: str,
    record: str,
    warn: bool = True,
    allowed: str = "continue with the new ones",
) -> list[dict]:
    """Refuse ``fixed`` changes (``why_fixed``: what they would break), and ``free`` ones unless ``allow``
    (``allowed``: what the flag then does); return the ``free`` changes accepted (each logged when ``warn``),
    to be recorded in ``record`` (a file)."""
    if fixed:
        raise LQSError(
            f"--resume from {source}: {describe(fixed)}; {why_fixed} (keep the run's settings, or start a new --out)"
        )
    if free and not allow:
        raise LQSError(
            f"--resume from {source}: {describe(free)} (keep the run's settings, pass {ALLOW_FLAG} to {allowed}, "
            f"recorded in {record}, or start a new --out)"
        )
    for c in free if warn else ():
        logger.warning("--resume with %s: %s was %r, now %r (recorded in %s)", ALLOW_FLAG, *c.values(), record)
    return free
