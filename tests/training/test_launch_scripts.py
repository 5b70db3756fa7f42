"""The torchrun launch scripts: one node and several, the papers' defaults, extra flags passed through
(torchrun itself is replaced by `echo` through the TORCHRUN variable)."""

import os
import subprocess

import pytest

from tests.utils import REPO

SCRIPTS = os.path.join(REPO, "scripts", "pretrain")


def _launch(script, **env):
    full = {**os.environ, "TORCHRUN": "echo", "DATA": "d/a d/b", "TOKENIZER": "tok", **env}
    proc = subprocess.run(
        ["bash", os.path.join(SCRIPTS, script), "--compile"], env=full, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("size,lr", [("160M", "6e-4"), ("470M", "3e-4"), ("1B", "2.5e-4"), ("1.7B", "2e-4")])
def test_single_node_defaults(size, lr):
    argv = _launch(f"{size}_bsl.sh")
    flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert flag["--nnodes"] == "1" and flag["--nproc-per-node"] == "8" and flag["--master-port"] == "29500"
    assert (
        flag["--model-config"] == size
        and flag["--lr"] == lr
        and float(flag["--min-lr"]) == pytest.approx(float(lr) / 10)
    )
    assert flag["--global-batch-size"] == "512" and flag["--max-length"] == "1024" and flag["--steps"] == "100000"
    assert argv[argv.index("--data") + 1 : argv.index("--data") + 3] == ["d/a", "d/b"]
    assert argv[-1] == "--compile" and "--resume" in argv  # extra flags last; restarts continue


def test_multi_node_env():
    argv = _launch(
        "1B_bsl.sh", NNODES="4", NODE_RANK="2", MASTER_ADDR="node0", MASTER_PORT="6000", GPUS_PER_NODE="4", TP="2"
    )
    flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert (flag["--nnodes"], flag["--node-rank"], flag["--master-addr"], flag["--master-port"]) == (
        "4",
        "2",
        "node0",
        "6000",
    )
    assert flag["--nproc-per-node"] == "4" and flag["--tp"] == "2"


def test_missing_data_is_an_error():
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    proc = subprocess.run(
        ["bash", os.path.join(SCRIPTS, "160M_bsl.sh")],
        env={**env, "TORCHRUN": "echo"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "DATA" in proc.stderr


@pytest.mark.parametrize("steps,warmup", [("100000", 2000), ("3", 0), ("50", 5)])
def test_warmup_follows_the_steps(steps, warmup):
    """The papers' 2000 warm-up steps, at most a tenth of the run: STEPS=3 is a valid run."""
    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.training.config import PretrainConfig

    argv = _launch("160M_bsl.sh", STEPS=steps)
    args = build_parser().parse_args(argv[argv.index("pretrain") :])
    assert build(PretrainConfig, args).warmup_steps == warmup


def test_warmup_steps_from_the_environment():
    argv = _launch("160M_bsl.sh", STEPS="3", WARMUP_STEPS="2")
    assert argv[argv.index("--warmup-steps") + 1] == "2"


LAUNCHERS = {  # script: (its required environment, the lqs subcommand, its default master port)
    "annotation/160M.sh": ({"MODEL": "m", "TRAIN": "t", "TARGET": "g", "PROXY": "p"}, "annotate", "29501"),
    "scorer/train.sh": ({"DATA": "sd", "BASE": "b"}, "train-scorer", "29500"),
    "scorer/infer.sh": ({"SCORER": "s", "DATA": "d", "OUT": "o"}, "score", "29500"),
    "pretrain/160M_bsl.sh": ({"DATA": "d", "TOKENIZER": "tok"}, "pretrain", "29500"),
}


@pytest.mark.parametrize("script", sorted(LAUNCHERS))
def test_every_launcher_runs_lqs_through_the_shared_torchrun(script):
    required, subcommand, port = LAUNCHERS[script]
    torchrun_vars = ("GPUS_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in torchrun_vars}
    env = {**env, "TORCHRUN": "echo", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", **required}
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", script), "--extra"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.split()
    torchrun = ["--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "8", "--master-addr", "node0"]
    assert argv[:12] == [*torchrun, "--master-port", port, "-m", "lqs_megatron"]
    assert argv[12] == subcommand and argv[-1] == "--extra"


def test_the_torchrun_command_is_written_once():
    """The launchers source scripts/_torchrun.sh rather than each spelling torchrun's flags."""
    scripts = os.path.join(REPO, "scripts")
    spelled = sorted(
        os.path.relpath(os.path.join(d, f), scripts)
        for d, _, files in os.walk(scripts)
        for f in files
        if f.endswith(".sh") and "--master-addr" in open(os.path.join(d, f)).read()
    )
    assert spelled == ["_torchrun.sh"]
