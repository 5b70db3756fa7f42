"""Every flag that a subcommand accepted before the parsers were generated from the dataclasses
still parses, and still does something.

``flags_before.json`` is a snapshot of every subcommand's flags taken from the hand-written
parsers at its ``base_commit`` (option strings, kind, nargs, type, choices, required, default,
mutually exclusive group). For each old flag the test parses the command's required flags plus
that flag with a value different from its old default, and checks that the namespace differs
from the one without it. A flag that was renamed is still accepted as a deprecated alias and
prints a warning naming the new spelling.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import pytest

from lqs_megatron.cli import build_parser
from lqs_megatron.cli.options import populated

SNAPSHOT = json.loads((Path(__file__).with_name("flags_before.json")).read_text())["commands"]
VALUE_LESS = ("_StoreTrueAction", "_StoreFalseAction", "_StoreConstAction")


def _value(flag: dict) -> list[str]:
    """argv tokens after the option string: a value that differs from the old default."""
    if flag["kind"] in VALUE_LESS:
        return []
    if flag["choices"]:
        v = next(str(c) for c in flag["choices"] if c != flag["default"])
    elif flag["type"] == "int":
        v = "7" if flag["default"] != 7 else "8"
    elif flag["type"] == "float":
        v = "0.25" if flag["default"] != 0.25 else "0.5"
    else:
        v = "some/path" if flag["default"] != "some/path" else "other/path"
    return [v]


def _base(flags: list[dict], skip_group: int | None = None) -> list[str]:
    """The command's required flags (and the first flag of each required exclusive group)."""
    argv, groups_done = [], set()
    for f in flags:
        g = f["exclusive_group"]
        if g is not None and g["required"]:
            if g["id"] in groups_done or g["id"] == skip_group:
                continue
            groups_done.add(g["id"])
        elif not f["required"]:
            continue
        argv += [f["option_strings"][0], *_value(f)]
    return argv


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return populated(build_parser())  # every subcommand's flags added; reusable for all the cases


def _parse(command: str, argv: list[str]) -> dict:
    ns = _parser().parse_args([command, *argv])
    return {k: v for k, v in vars(ns).items() if k != "func"}


def _cases():
    for command, flags in sorted(SNAPSHOT.items()):
        for f in flags:
            for opt in f["option_strings"]:
                yield pytest.param(command, opt, f, id=f"{command} {opt}")


@pytest.mark.parametrize("command,opt,flag", list(_cases()))
def test_every_old_flag_still_parses(command, opt, flag, capsys):
    flags = SNAPSHOT[command]
    group = flag["exclusive_group"]
    base = _base(flags, skip_group=group["id"] if group and group["required"] else None)
    if flag["required"] or (group and group["required"]):
        # a required flag is part of every command line: the minimal one must parse
        _parse(command, base if not group else [*base, opt, *_value(flag)])
        return
    before = _parse(command, base)
    capsys.readouterr()
    after = _parse(command, [*base, opt, *_value(flag)])
    err = capsys.readouterr().err
    assert after != before, f"lqs {command} {opt} parses but changes nothing"
    action = _new_action(command, opt)
    if getattr(action, "deprecated_for", None):
        assert "deprecated" in err and action.deprecated_for in err, err
    else:
        assert "deprecated" not in err, err


def _new_action(command: str, opt: str) -> argparse.Action:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    return p._option_string_actions[opt]


def test_the_snapshot_covers_every_command():
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(SNAPSHOT) <= set(sub.choices)
    assert sum(len(v) for v in SNAPSHOT.values()) >= 160
