import pytest
import yaml

from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.config import config_from_dict, load_config
from lqs_megatron.pipeline.demo import DEMO_CONFIG
from lqs_megatron.pipeline.plan import Plan


def _minimal(tmp_path):
    return {"workdir": "run", "data": {"corpus": ["c.jsonl"], "target": "t.jsonl"}}


def test_relative_paths_resolve_against_the_config_dir(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_minimal(tmp_path)))
    cfg = load_config(tmp_path / "p.yaml")
    assert cfg.workdir == str(tmp_path / "run")
    assert cfg.data.corpus == [str(tmp_path / "c.jsonl")] and cfg.data.target == str(tmp_path / "t.jsonl")


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"data": {"corpus": ["c"], "target": "t", "feild": "x"}}, "unknown key.*feild"),
        ({"annotate": {"methods": ["lqs", "dsir"]}}, "unknown method 'dsir'"),
        ({"selection": {"method": "threshold"}}, "needs selection.threshold"),
        ({"selection": {"order": "random"}}, "selection.order"),
        ({"data": {"corpus": [], "target": "t"}}, "corpus names no file"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, patch, match):
    data = {**_minimal(tmp_path), **patch}
    with pytest.raises(LQSError, match=match):
        config_from_dict(data, tmp_path)


def test_plan_of_the_demo_config_is_consistent(tmp_path):
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data.update(workdir=str(tmp_path), data={**data["data"], "corpus": ["c.jsonl"], "target": "t.jsonl"})
    plan = Plan(config_from_dict(data, tmp_path))
    steps = plan.steps()
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    seen = set()
    for s in steps:  # every dependency runs earlier; every command is a real subcommand
        assert set(s.after) <= seen, (s.name, s.after)
        seen.add(s.name)
    from lqs_megatron.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {s.argv[0] for s in steps if s.argv} <= commands | {
        "tokenize",
        "train-tokenizer",
        "tokenize-target",
        "pretrain",
        "export-hf",
        "evaluate",
        "annotate",
        "prepare-scorer-data",
        "train-scorer",
        "score",
        "select",
        "order",
        "sample-proxy",
    }
    assert names[-1] == "evaluate-random" and "pick-random" in names


def test_distributed_steps_run_under_torchrun_on_one_node(tmp_path):
    import sys

    from lqs_megatron.pipeline.runner import Runner, Step

    step = Step("pretrain-x", ["pretrain", "--steps", "3"], distributed=True, resume_flag="--resume")
    one = Runner(tmp_path, nproc_per_node=1)
    assert one.command(step, resume=False) == [sys.executable, "-m", "lqs_megatron", "pretrain", "--steps", "3"]
    eight = Runner(tmp_path, nproc_per_node=8, torchrun_args=["--master-port=29600"])
    cmd = eight.command(step, resume=True)
    assert cmd[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
        "--master-port=29600",
        "-m",
    ]
    assert cmd[-4:] == ["pretrain", "--steps", "3", "--resume"]
    single = Step("select", ["select", "--k", "1"])  # not distributed: one process whatever the launch
    assert eight.command(single, resume=False)[1:3] == ["-m", "lqs_megatron"]
