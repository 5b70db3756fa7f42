"""Step settings: one dataclass per step is the single source of its flags, YAML keys and command lines.

A field of a step's dataclass is one setting. Its name is the pipeline YAML key; with dashes
it is the ``lqs`` flag (``max_length`` -> ``--max-length``) unless :func:`option` names another;
its annotation is its type (``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``X | None``);
its default is the default everywhere (a field without one is a required flag); the string
literal under it (a field docstring) is its help. :func:`option` adds what a flag needs beyond
that (another spelling, a metavar, choices, a help section, a hidden test flag, old spellings
kept as deprecated aliases); :func:`internal` marks a field that is not a flag.

This module is the library side (no argparse): the field docstrings, the type check of a
mapping (the pipeline YAML) against a dataclass, and the command line of a dataclass's values
(the pipeline's steps). ``lqs_megatron/cli/options.py`` builds the argparse parsers from the
same fields. Adding a setting is adding one field with its docstring (docs/design.md,
"Configuration").
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from lqs_megatron.errors import LQSError

#: Placeholders of common settings, so that one kind of path reads the same in every ``--help``.
METAVARS = {"tokenizer": "TOKENIZER_DIR", "src_tokenizer": "TOKENIZER_DIR", "dst_tokenizer": "TOKENIZER_DIR"}


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Deprecated:
    """An old spelling of a flag, still accepted for one release with a warning.

    ``values`` maps old values to new ones (``--dtype float32`` -> ``--precision fp32``);
    ``const`` is the value a value-less old flag sets (``--no-bf16`` -> ``--precision fp32``).
    """

    flag: str
    values: dict[str, Any] | None = None
    const: Any = UNSET


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line (all optional; see :func:`option`)."""

    name: str | None = None
    metavar: str | None = None
    choices: tuple | None = None
    group: str | None = None
    hidden: bool = False
    deprecated: tuple[Deprecated, ...] = ()
    help: str | None = None
    default: Any = UNSET
    one_of: str | None = None
    parse: Callable[[str], Any] | None = None


def option(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple | None = None,
    group: str | None = None,
    hidden: bool = False,
    deprecated: tuple[Deprecated | str, ...] = (),
    help: str | None = None,
    flag_default: Any = UNSET,
    one_of: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with flag details. ``flag`` overrides ``--field-name`` (a ``bool`` field
    whose default is True needs a ``--no-...`` flag); ``deprecated`` lists old spellings (a string
    is a plain rename); ``hidden`` keeps a test-only flag out of ``--help``; ``flag_default`` is the
    flag's default for a field that has none because library callers pass it by position; fields
    with the same ``one_of`` name are alternatives, exactly one of which the command line must give;
    ``parse`` turns the text of a value that is not a plain int/float/str (``--lr auto`` or a number)
    into the setting, for the flag and for a YAML string alike (raise ``ValueError`` to refuse it)."""
    old = tuple(d if isinstance(d, Deprecated) else Deprecated(d) for d in deprecated)
    choices = tuple(choices) if choices else None
    flag_meta = Flag(flag, metavar, choices, group, hidden, old, help, flag_default, one_of, parse)
    meta = {"flag": flag_meta}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def internal(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataclass field that is set by code, never by a flag or a YAML key."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"internal": True})


@functools.cache
def _yaml_loader():
    """yaml's safe loader, refusing a mapping that repeats a key (yaml keeps the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                        seen.setdefault(key, line)
                    except TypeError:  # an unhashable key: construct_mapping's own error names it
                        continue
                    if first is not None:
                        raise LQSError(
                            f"{self.name}:{line}: duplicate key {key!r} (first at line {first}); "
                            "keep one (YAML would use the last silently)"
                        )
            return super().construct_mapping(node, deep)

    return Loader


def read_yaml(path: str | os.PathLike) -> Any:
    """The contents of a YAML file (None when empty). A file that is not YAML, or that repeats a key in
    a mapping, is an :class:`LQSError` naming the file (and the line of the repeated key). Every YAML
    the project reads (pipeline and demo configs, model configs) goes through here."""
    import yaml

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LQSError(f"{path}: cannot read ({e})") from None
    loader = _yaml_loader()(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise LQSError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


MAX_SEED = 2**63 - 1


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    """A seed is an integer in [0, 2**63 - 1] (what numpy's and torch's generators all take); None passes."""
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise LQSError(f"{flag} must be an integer in [0, 2**63 - 1], got {seed}")


def is_setting(f: dataclasses.Field) -> bool:
    return f.init and not f.metadata.get("internal", False)


def settings(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are settings (flags and YAML keys), in declaration order."""
    return [f for f in dataclasses.fields(cls) if is_setting(f)]


def flag_of(f: dataclasses.Field) -> Flag:
    return f.metadata.get("flag") or Flag()


def flag_name(f: dataclasses.Field) -> str:
    return flag_of(f).name or "--" + f.name.replace("_", "-")


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING or flag_of(f).default is not UNSET


def default_of(f: dataclasses.Field) -> Any:
    if flag_of(f).default is not UNSET:
        return flag_of(f).default
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}``: the string literal under each field (base classes first), or the
    ``doc`` of a field's metadata (fields of a generated dataclass)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    for f in dataclasses.fields(cls):
        if "doc" in f.metadata:
            docs[f.name] = f.metadata["doc"]
    return docs


@dataclass(frozen=True)
class Kind:
    """A setting's type: ``base`` (int, float, str, bool, dict or other), optional, a list of ``base``."""

    base: Any
    optional: bool = False
    is_list: bool = False


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def kind_of(cls, name: str) -> Kind:
    tp = _hints(cls)[name]
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    origin = typing.get_origin(tp)
    if origin is list:
        args = typing.get_args(tp)
        return Kind(args[0] if args else Any, optional, True)
    if origin is dict:
        return Kind(dict, optional)
    return Kind(tp, optional)


_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _scalar(base: Any, value: Any, where: str) -> Any:
    if base is bool:
        ok = isinstance(value, bool)
    elif base in (int, float):
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string; argparse would accept it
            try:
                value = base(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float) if base is float else int) and not isinstance(value, bool)
        if ok and base is float:
            value = float(value)
    elif base is str:
        ok = isinstance(value, str)
    elif base is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise LQSError(f"{where}: expected {_EXPECTED.get(base, base)}, got {value!r}")
    return value


def check_value(cls, name: str, value: Any, where: str) -> Any:
    """``value`` checked against the type (and choices) of ``cls.name``; ints become floats where
    the field is a float. Raises :class:`LQSError` naming ``where``."""
    kind = kind_of(cls, name)
    parse = flag_of(next(f for f in dataclasses.fields(cls) if f.name == name)).parse
    if parse is not None and isinstance(value, str):
        try:
            return parse(value)
        except ValueError as e:
            raise LQSError(f"{where}: {e}") from None
    if value is None:
        if kind.optional:
            return None
        raise LQSError(f"{where}: expected {_EXPECTED.get(kind.base, kind.base)}, got null")
    if kind.is_list:
        if not isinstance(value, list):
            what = _EXPECTED.get(kind.base, "value").split(" ", 1)[-1]
            hint = f" (a list: [{value}])" if isinstance(value, (str, int, float)) else ""
            raise LQSError(f"{where}: expected a list of {what}s, got {value!r}{hint}")
        value = [_scalar(kind.base, v, f"{where}[{i}]") for i, v in enumerate(value)]
    else:
        value = _scalar(kind.base, value, where)
    choices = flag_of(next(f for f in dataclasses.fields(cls) if f.name == name)).choices
    for v in value if kind.is_list else [value]:
        if choices and v not in choices:
            raise LQSError(f"{where}: expected one of {', '.join(map(str, choices))}, got {v!r}")
    return value


def check_mapping(cls, data: Any, where: str, _keys: tuple[str, ...] = ()) -> dict:
    """Check the keys and value types of ``data`` against ``cls`` (nested dataclasses recursively).

    Returns a copy with checked values (nested mappings stay mappings). Unknown keys and values of
    the wrong type are errors naming ``where`` (the file) and the key (``proxy.num``); renamed keys
    (a field's deprecated spellings) are accepted under their new name. Missing keys are fine (the
    defaults fill them in), so an override of part of a config is checked the same way.
    """
    here = f"{where}: {'.'.join(_keys)}" if _keys else where
    if not isinstance(data, dict):
        raise LQSError(f"{here}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in settings(cls)}
    renamed = {
        d.flag.lstrip("-").replace("-", "_"): f.name
        for f in fields.values()
        for d in flag_of(f).deprecated
        if d.values is None and d.const is UNSET
    }
    out = {}
    for key, value in data.items():
        name = renamed.get(key, key) if key not in fields else key
        if name not in fields:
            raise LQSError(f"{here}: unknown key {key!r}; known: {', '.join(fields)}")
        if name in out:
            raise LQSError(f"{here}: {key!r} and {name!r} name the same setting; keep {name!r}")
        sub = nested_type(fields[name])
        if sub is not None:
            out[name] = check_mapping(sub, value if value is not None else {}, where, (*_keys, name))
        else:
            out[name] = check_value(cls, name, value, f"{where}: {'.'.join((*_keys, name))}")
    return out


def nested_type(f: dataclasses.Field):
    """The dataclass a field holds (a pipeline section), or None."""
    factory = f.default_factory
    return factory if factory is not MISSING and dataclasses.is_dataclass(factory) else None


def to_argv(cls, values: dict[str, Any], *, keep_defaults: bool = False) -> list[str]:
    """The command-line flags that set ``values`` (field name -> value) on ``cls``'s parser.

    Values equal to the field's default are left out unless ``keep_defaults``; None is left out.
    """
    fields = {f.name: f for f in settings(cls)}
    argv: list[str] = []
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            raise KeyError(f"{cls.__name__} has no setting {name!r}")
        if value is None or (not keep_defaults and has_default(f) and value == default_of(f)):
            continue
        flag = flag_name(f)
        if kind_of(cls, name).base is bool and not kind_of(cls, name).is_list:
            if bool(value) == (not flag.startswith("--no-")):
                argv.append(flag)
            continue
        argv += [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]
    return argv


def values_of(obj) -> dict[str, Any]:
    """``{field: value}`` of the settings of a dataclass instance."""
    return {f.name: getattr(obj, f.name) for f in settings(type(obj))}


def derive(
    name: str,
    step,
    *,
    exclude: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    extra: tuple[tuple[str, Any, dataclasses.Field], ...] = (),
    doc: str = "",
):
    """A dataclass made of ``step``'s settings (all, or ``only``, less ``exclude``), with their types,
    flags and docstrings; ``defaults`` replaces a default (a required setting must get one);
    ``extra`` adds ``(name, type, field)`` settings of its own. A pipeline section is one."""
    docs = field_docs(step)
    hints = _hints(step)
    defaults = defaults or {}
    out = []
    for f in settings(step):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        meta = {**f.metadata, "doc": docs.get(f.name, "")}
        if f.name in defaults:
            value = defaults[f.name]
            fld = dataclasses.field(default_factory=lambda v=value: list(v), metadata=meta)
            if not isinstance(value, list):
                fld = dataclasses.field(default=value, metadata=meta)
        elif f.default_factory is not MISSING:
            fld = dataclasses.field(default_factory=f.default_factory, metadata=meta)
        elif has_default(f):
            fld = dataclasses.field(default=default_of(f), metadata=meta)
        else:
            raise TypeError(f"{name}: setting {f.name!r} of {step.__name__} is required; give it a default")
        out.append((f.name, hints[f.name], fld))
    cls = dataclasses.make_dataclass(name, [*out, *extra])
    cls.__doc__ = doc or f"Settings of {step.__name__}."
    cls.step, cls.step_fields = step, tuple(n for n, _, _ in out)
    return cls


def section_values(section, step=None) -> dict[str, Any]:
    """``{setting: value}`` of a :func:`derive`-d section instance, for its step (or ``step``, which
    must be the section's own step or share its settings), less the section's own extra keys."""
    names = getattr(type(section), "step_fields", ())
    if step is not None and step is not type(section).step:
        own = {f.name for f in settings(step)}
        names = tuple(n for n in names if n in own)
    return {n: getattr(section, n) for n in names}
