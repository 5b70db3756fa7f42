"""Every subcommand's flags are generated from its dataclasses: a round trip per dataclass
(instance -> the pipeline's command line -> the parser -> the same instance), help that shows
each default once and never None, deprecated spellings that warn and mean the new flag."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lqs_megatron.cli import build_parser
from lqs_megatron.cli.options import build, populated
from lqs_megatron.curate.config import OrderConfig, SelectConfig
from lqs_megatron.data.config import (
    ExportJsonlConfig,
    MaterializeConfig,
    MergeConfig,
    SampleProxyConfig,
    TrainTokenizerConfig,
)
from lqs_megatron.data.preprocess.conversations import TargetConfig
from lqs_megatron.data.preprocess.retokenize import RetokenizeConfig
from lqs_megatron.data.preprocess.tokenize import TokenizeConfig
from lqs_megatron.lqs.config import AnnotateConfig, ReportConfig
from lqs_megatron.options import UNSET, flag_of, kind_of, settings, to_argv, values_of
from lqs_megatron.pipeline.config import DemoCommand, PipelineCommand
from lqs_megatron.scorer.config import PrepareScorerConfig, ScoreOptions, ScoreRun, TrainScorerConfig, TrainScorerRun
from lqs_megatron.training.config import EvaluateConfig, ExportHFConfig, PretrainConfig

COMMANDS = {
    "train-tokenizer": [TrainTokenizerConfig],
    "tokenize": [TokenizeConfig],
    "tokenize-target": [TargetConfig],
    "retokenize": [RetokenizeConfig],
    "sample-proxy": [SampleProxyConfig],
    "merge": [MergeConfig],
    "export-jsonl": [ExportJsonlConfig],
    "materialize": [MaterializeConfig],
    "pretrain": [PretrainConfig],
    "evaluate": [EvaluateConfig],
    "export-hf": [ExportHFConfig],
    "annotate": [AnnotateConfig],
    "report": [ReportConfig],
    "prepare-scorer-data": [PrepareScorerConfig],
    "train-scorer": [TrainScorerRun, TrainScorerConfig],
    "score": [ScoreRun, ScoreOptions],
    "select": [SelectConfig],
    "order": [OrderConfig],
    "pipeline": [PipelineCommand],
    "demo": [DemoCommand],
}
TS = ["train-scorer", "--data", "d", "--out", "o", "--base", "b"]
SCORE = ["score", "--scorer", "s", "--data", "d", "--out", "o"]
EVAL = ["evaluate", "--model", "m", "--data", "d", "--max-length", "8"]
# settings that exclude each other: the round trip leaves the second one unset
EXCLUSIVE = {PretrainConfig: "init_from", TrainScorerRun: "model_config", MergeConfig: "shards"}
# settings a method does not take (the dataclass refuses them): the round trip leaves them unset
UNSET_FOR_METHOD = {
    SelectConfig: ("k", "threshold"),
    OrderConfig: (
        "layers",
        "sections",
        "transition_ratio",
        "descending",
        "front_ratio",
        "back_ratio",
        "front_from",
        "back_from",
    ),
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = populated(build_parser())
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


# settings whose values have a form of their own
VALUES = {"shard": "1/3", "keep_fields": ["source", "url"]}
# settings whose text is parsed (option(parse=...)): a valid value per class
CLASS_VALUES = {
    (AnnotateConfig, "lr"): "auto",
    (ReportConfig, "chars"): 200,
    (SelectConfig, "method"): "top-r",
    (OrderConfig, "method"): "shuffle",
}


def _not_default(cls, f: dataclasses.Field):
    """A valid value of the setting that differs from its default."""
    if (cls, f.name) in CLASS_VALUES:
        return CLASS_VALUES[cls, f.name]
    if f.name in VALUES:
        return VALUES[f.name]
    kind, choices = kind_of(cls, f.name), flag_of(f).choices
    if choices:
        return choices[-1] if choices[-1] != f.default else choices[0]
    if kind.base is bool:
        return f.default is not True
    one = {int: 7, float: 0.25}.get(kind.base, f"p/{f.name}")
    return [one, one] if kind.is_list else one


def _instance(cls):
    values = {f.name: _not_default(cls, f) for f in settings(cls)}
    if cls in EXCLUSIVE:
        values[EXCLUSIVE[cls]] = None
    for name in UNSET_FOR_METHOD.get(cls, ()):
        values[name] = None
    return cls(**values)


def test_every_command_is_covered():
    assert set(_subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_round_trip_through_the_parser(command):
    classes = COMMANDS[command]
    objs = [_instance(cls) for cls in classes]
    argv = [a for cls, obj in zip(classes, objs) for a in to_argv(cls, values_of(obj))]
    args = build_parser().parse_args([command, *argv])
    for cls, obj in zip(classes, objs):
        assert build(cls, args) == obj, (command, argv)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_defaults_are_the_dataclass_defaults(command):
    """Only the required flags given: the parsed dataclass equals the one made from the defaults."""
    classes = COMMANDS[command]
    req = {cls: {f.name: _not_default(cls, f) for f in settings(cls) if not _has_default(f)} for cls in classes}
    if TrainScorerRun in req:
        req[TrainScorerRun]["base"] = "hf"
    if PretrainConfig in req:
        req[PretrainConfig]["model_config"] = "tiny"
    if MergeConfig in req:
        req[MergeConfig]["data"] = ["a", "b"]
    if SelectConfig in req:  # the method's parameter
        req[SelectConfig]["r"] = 0.5
    argv = [a for cls in classes for a in to_argv(cls, req[cls], keep_defaults=True)]
    args = build_parser().parse_args([command, *argv])
    for cls in classes:  # a flag default stands in for a field that has none (library callers pass it)
        flag_defaults = {f.name: flag_of(f).default for f in settings(cls) if f.name not in req[cls]}
        flag_defaults = {k: v for k, v in flag_defaults.items() if v is not UNSET}
        assert build(cls, args) == cls(**req[cls], **flag_defaults)


def _has_default(f: dataclasses.Field) -> bool:
    from lqs_megatron.options import has_default

    return has_default(f)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_each_default_once_and_never_none(command):
    text = _subparsers()[command].format_help()
    assert "default: None" not in text and "(default: [])" not in text
    p = _subparsers()[command]
    formatter = p._get_formatter()
    for action in p._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        assert formatter._expand_help(action).count("default") <= 1, (command, action.option_strings)


def test_stop_after_is_hidden_but_parses():
    sub = _subparsers()
    assert "--stop-after" not in sub["pretrain"].format_help()
    args = build_parser().parse_args(
        ["pretrain", "--data", "d", "--out", "o", "--max-length", "8", "--global-batch-size", "2", "--steps", "3"]
        + ["--lr", "0.1", "--model-config", "tiny", "--stop-after", "2"]
    )
    assert build(PretrainConfig, args).stop_after == 2


def test_select_help_says_which_parameter_each_method_needs():
    text = " ".join(_subparsers()["select"].format_help().split())
    for flag, method in (("--r", "top-r"), ("--k", "top-k"), ("--threshold", "threshold")):
        assert f"required with --method {method}" in text, flag


@pytest.mark.parametrize(
    "command,old,new",
    [
        (TS, ["--warmup", "3"], ["--warmup-steps", "3"]),
        (TS, ["--no-bf16"], ["--precision", "fp32"]),
        (TS, ["--batch-size", "8"], ["--global-batch-size", "8"]),
        (SCORE, ["--no-bf16"], ["--precision", "fp32"]),
        (SCORE, ["--max-batch-size", "9"], ["--micro-batch-size", "9"]),
        (["export-hf", "--checkpoint", "c", "--out", "o"], ["--dtype", "bfloat16"], ["--precision", "bf16"]),
        (EVAL, ["--batch-size", "4"], ["--micro-batch-size", "4"]),
        (
            ["annotate", *(x for k in ("model", "train", "target", "proxy", "out") for x in (f"--{k}", k))],
            ["--dtype", "float64"],
            ["--precision", "fp64"],
        ),
        (
            ["annotate", *(x for k in ("model", "train", "target", "proxy", "out") for x in (f"--{k}", k))],
            ["--batch-size", "32"],
            ["--global-batch-size", "32"],
        ),
    ],
)
def test_deprecated_spellings_warn_and_mean_the_new_flag(command, old, new, capsys):
    capsys.readouterr()
    parsed_old = vars(build_parser().parse_args([*command, *old]))
    err = capsys.readouterr().err
    assert f"{old[0]} is deprecated" in err and f"use {new[0]}" in err, err
    parsed_new = vars(build_parser().parse_args([*command, *new]))
    assert capsys.readouterr().err == ""
    assert parsed_old == parsed_new


def test_one_vocabulary_across_commands():
    """One precision flag, one warm-up flag, batch sizes named global or micro (per rank)."""
    sub = _subparsers()
    flags = {name: set(p._option_string_actions) for name, p in sub.items()}
    visible = {
        name: {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
        for name, p in sub.items()
    }
    for name in ("pretrain", "evaluate", "annotate", "train-scorer", "score", "export-hf"):
        assert "--precision" in visible[name], name
        assert not {"--dtype", "--no-bf16", "--bf16"} & visible[name], name
    assert "--warmup-steps" in visible["pretrain"] and "--warmup-steps" in visible["train-scorer"]
    assert all("--warmup" not in v for v in visible.values())
    for name in ("evaluate", "annotate", "train-scorer", "score"):
        assert "--batch-size" not in visible[name] and "--max-batch-size" not in visible[name], name
    assert "--batch-size" in flags["annotate"]  # still accepted, hidden
    metavars = {a.metavar for p in sub.values() for a in p._actions if a.dest in ("tokenizer", "tokenizer_dir")}
    assert metavars == {"TOKENIZER_DIR"}


def test_flags_are_added_only_when_a_command_is_used():
    """`lqs --help` imports no settings module; a command imports only its own."""
    import subprocess
    import sys

    code = (
        "import sys; from lqs_megatron.cli import build_parser; p = build_parser(); p.format_help(); "
        "print(sorted(m for m in sys.modules if m.startswith('lqs_megatron.') and 'cli' not in m)); "
        "p.parse_args(['select', '--data', 'd', '--out', 'o', '--method', 'top-k', '--k', '1']); "
        "print(sorted(m for m in sys.modules if m.startswith('lqs_megatron.') and 'cli' not in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert eval(out[0]) == ["lqs_megatron.errors", "lqs_megatron.options"], out[0]
    assert "lqs_megatron.curate.config" in eval(out[1]) and "lqs_megatron.training.config" not in eval(out[1])


def test_a_renamed_switch_and_a_renamed_list_keep_working(capsys):
    """The alias machinery for kinds no command uses yet: a bool switch and a list flag renamed."""
    from dataclasses import dataclass

    from lqs_megatron.cli.options import add_options
    from lqs_megatron.options import option

    @dataclass
    class Demo:
        fast: bool = option(False, deprecated=("--quick",))
        """Go fast."""
        cache: bool = option(True, flag="--no-cache", deprecated=("--nocache",))
        """Use the cache."""
        files: list[str] = option(default_factory=list, deprecated=("--inputs",))
        """Files."""

    p = argparse.ArgumentParser(prog="lqs demo-x")
    add_options(p, Demo)
    assert build(Demo, p.parse_args(["--quick", "--nocache", "--inputs", "a", "b"])) == Demo(True, False, ["a", "b"])
    err = capsys.readouterr().err
    assert all(f"{old} is deprecated" in err for old in ("--quick", "--nocache", "--inputs"))
    assert build(Demo, p.parse_args([])) == Demo()


def test_a_setting_with_its_own_parser(tmp_path):
    """``parse`` (e.g. a learning rate that may be ``auto``) serves the flag and the YAML key alike."""
    from dataclasses import dataclass

    from lqs_megatron.cli.options import add_options
    from lqs_megatron.errors import LQSError
    from lqs_megatron.options import check_mapping, option

    def lr_value(text: str) -> float | str:
        if text == "auto":
            return text
        return float(text)  # ValueError for anything else

    @dataclass
    class Demo:
        lr: float | str = option(1e-3, parse=lr_value)
        """Peak learning rate, or auto."""

    p = argparse.ArgumentParser(prog="lqs demo-x")
    add_options(p, Demo)
    assert build(Demo, p.parse_args(["--lr", "auto"])).lr == "auto"
    assert build(Demo, p.parse_args(["--lr", "2e-4"])).lr == 2e-4
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "fast"])
    assert check_mapping(Demo, {"lr": "auto"}, "f.yaml") == {"lr": "auto"}
    assert check_mapping(Demo, {"lr": 0.5}, "f.yaml") == {"lr": 0.5}
    with pytest.raises(LQSError, match="f.yaml: lr: could not convert"):
        check_mapping(Demo, {"lr": "fast"}, "f.yaml")
    assert to_argv(Demo, {"lr": "auto"}) == ["--lr", "auto"]


def test_one_spelling_from_field_to_flag():
    """A setting's flag is its field name with dashes (the YAML key is the field name), so grep of a flag finds
    its code; a switch that is on by default is turned off by ``--no-`` and a word of the field. The old
    spellings live on only as deprecated aliases. ``known``: today's exceptions, the library names of the
    tokenize family (may only shrink)."""
    from lqs_megatron.options import flag_name

    known = {
        "TrainTokenizerConfig.inputs: --input",
        "TokenizeConfig.inputs: --input",
        "TokenizeConfig.tokenizer_dir: --tokenizer",
        "TokenizeConfig.out_prefix: --out",
        "TargetConfig.inputs: --input",
        "TargetConfig.tokenizer_dir: --tokenizer",
        "TargetConfig.out_prefix: --out",
        "RetokenizeConfig.out_prefix: --out",
    }
    other = []
    for classes in COMMANDS.values():
        for cls in classes:
            for f in settings(cls):
                flag, plain = flag_name(f), "--" + f.name.replace("_", "-")
                switch_off = flag.startswith("--no-") and kind_of(cls, f.name).base is bool
                if flag != plain and not switch_off:
                    other.append(f"{cls.__name__}.{f.name}: {flag}")
    assert set(other) == known, sorted(set(other) ^ known)


def test_renamed_settings_keep_their_old_yaml_keys_and_name_their_metavar_after_the_flag():
    from lqs_megatron.options import check_mapping

    old = {
        AnnotateConfig: ({"batch_size": 8, "backend": "torch"}, {"global_batch_size": 8, "kernel_backend": "torch"}),
        TrainScorerConfig: ({"batch_size": 8, "warmup": 3}, {"global_batch_size": 8, "warmup_steps": 3}),
        ScoreOptions: ({"max_batch_size": 8, "shard_size": 9}, {"micro_batch_size": 8, "part_size": 9}),
    }
    for cls, (keys, renamed) in old.items():
        assert check_mapping(cls, keys, "p.yaml") == renamed, cls.__name__
    for command in ("annotate", "train-scorer"):
        action = next(a for a in _subparsers()[command]._actions if "--global-batch-size" in a.option_strings)
        assert action.metavar == "GLOBAL_BATCH_SIZE", command
