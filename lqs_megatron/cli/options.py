"""argparse flags generated from a step's dataclass (the library side is :mod:`lqs_megatron.options`).

:func:`add_options` adds one flag per setting of a dataclass: the type from the annotation
(``list[...]`` takes one or more values, a ``bool`` is a switch), required when the field has
no default, the help from the field docstring, the default printed once by
:class:`HelpFormatter` (never "None"). Old spellings become hidden aliases that print a
deprecation warning and set the new setting. :func:`build` makes the dataclass back from the
parsed namespace, so a handler reads one validated object.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections.abc import Callable
from typing import Any

from lqs_megatron.options import (
    METAVARS,
    UNSET,
    Deprecated,
    default_of,
    field_docs,
    flag_name,
    flag_of,
    has_default,
    kind_of,
    settings,
)


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions keep their paragraphs; a flag's default is shown once, and only when there is one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if help == argparse.SUPPRESS:
            return help
        default = action.default
        if (
            action.required
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
            or "default" in help
        ):
            return help
        return f"{help} (default: %(default)s)" if help else "(default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(p, width, indent) for p in text.split("\n\n"))


class Command(argparse.ArgumentParser):
    """A subcommand whose flags are added when it is first used (parsed, or asked for help or usage):
    ``lqs --help`` and each command import only the settings they show."""

    def __init__(self, *args, setup: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup = setup

    def populate(self) -> Command:
        """Add the flags now (once)."""
        setup, self._setup = self._setup, None
        if setup is not None:
            setup(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()


def new_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    setup: Callable[[argparse.ArgumentParser], None],
) -> Command:
    """A subcommand with the project's help format; ``setup(parser)`` adds its flags (imports its
    settings' dataclasses, calls :func:`add_options`) when the command is used. ``sub`` comes from
    ``add_subparsers(parser_class=Command)`` (``lqs_megatron.cli.build_parser``)."""
    return sub.add_parser(name, help=help, description=description, formatter_class=HelpFormatter, setup=setup)


def flags(module: str, *names: str) -> Callable[[argparse.ArgumentParser], None]:
    """The ``setup`` of :func:`new_command` that adds the flags of the dataclasses ``names`` of ``module``
    (imported only when the command is used)."""

    def setup(parser: argparse.ArgumentParser) -> None:
        mod = importlib.import_module(module)
        for name in names:
            add_options(parser, getattr(mod, name))

    return setup


def populated(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the flags of every subcommand added (for tools and tests that inspect them)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.populate()
    return parser


class _Deprecated(argparse.Action):
    """An old spelling: warns, then stores the (translated) value under the new setting."""

    def __init__(self, option_strings, dest, new_flag: str, old: Deprecated, **kw):
        self.deprecated_for, self.old = new_flag, old
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.old.const is not UNSET:
            value, shown = self.old.const, f"{self.deprecated_for} {self.old.const}"
        elif self.old.values is not None:
            value = self.old.values[values]
            shown = f"{self.deprecated_for} {value}"
        else:
            value, shown = values, self.deprecated_for
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed after this release; "
            f"use {shown}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, value)


def _help(cls, f: dataclasses.Field) -> str:
    fl = flag_of(f)
    if fl.hidden:
        return argparse.SUPPRESS
    text = " ".join((fl.help or field_docs(cls).get(f.name, "")).split()).replace("``", "")
    return re.sub(r"^--[a-z0-9-]+: ", "", text).replace("%", "%%")  # less a leading "--flag: "


def add_options(
    parser: argparse.ArgumentParser, cls, *, exclude: tuple[str, ...] = (), groups: dict | None = None
) -> None:
    """One flag per setting of ``cls`` (less ``exclude``); ``groups`` caches the help sections by title,
    created in the order of ``cls.help_groups`` first, if the class names one."""
    groups = {} if groups is None else groups
    for title in getattr(cls, "help_groups", ()):
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
    for f in settings(cls):
        if f.name in exclude:
            continue
        fl, kind, flag = flag_of(f), kind_of(cls, f.name), flag_name(f)
        if fl.group and fl.group not in groups:
            groups[fl.group] = parser.add_argument_group(fl.group)
        target = groups[fl.group] if fl.group else parser
        if fl.one_of:  # alternatives: exactly one of them (argparse's usage error names them all)
            key = ("one of", fl.one_of)
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group(required=True)
            target = groups[key]
        kw: dict[str, Any] = {"dest": f.name, "help": _help(cls, f)}
        if kind.base is bool and not kind.is_list:
            kw["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        else:
            if fl.parse is not None:
                kw["type"] = fl.parse
            elif kind.base in (int, float):
                kw["type"] = kind.base
            if kind.is_list:
                kw["nargs"] = "+"
            if fl.choices:
                kw["choices"] = fl.choices
            if not fl.choices:  # named after the flag, not the field (--global-batch-size, not BATCH_SIZE)
                kw["metavar"] = fl.metavar or METAVARS.get(f.name) or flag.lstrip("-").replace("-", "_").upper()
        if has_default(f):
            kw["default"] = default_of(f)
        else:
            kw["required"] = True
        target.add_argument(flag, **kw)
        for old in fl.deprecated:
            if kind.base is bool and not kind.is_list and old.const is UNSET:  # a renamed switch sets what it set
                old = dataclasses.replace(old, const=kw["action"] == "store_true")
            nargs = 0 if old.const is not UNSET else ("+" if kind.is_list else None)
            extra: dict[str, Any] = {"nargs": nargs, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
            if old.values is not None:
                extra["choices"] = tuple(old.values)
            elif nargs != 0 and kind.base in (int, float):
                extra["type"] = kind.base
            target.add_argument(old.flag, dest=f.name, action=_Deprecated, new_flag=flag, old=old, **extra)


def build(cls, args: argparse.Namespace, **fixed: Any):
    """``cls`` from the parsed flags (fields without a flag keep their defaults, ``fixed`` overrides)."""
    values = {f.name: getattr(args, f.name) for f in settings(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})
