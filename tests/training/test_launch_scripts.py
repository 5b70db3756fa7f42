"""The torchrun launch scripts: one node and several, the papers' defaults, extra flags passed through
(torchrun itself is replaced by `echo` through the TORCHRUN variable)."""

import os
import subprocess

import pytest

from tests.utils import REPO

SCRIPTS = os.path.join(REPO, "scripts", "pretrain")


def _launch(script, **env):
    full = {**os.environ, "TORCHRUN": "echo", "DATA": "d/a d/b", "TOKENIZER": "tok", **env}
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, script), "--compile"], env=full, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
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
    argv = _launch("1B_bsl.sh", NNODES="4", NODE_RANK="2", MASTER_ADDR="node0", MASTER_PORT="6000",
                   GPUS_PER_NODE="4", TP="2")  # fmt: skip
    flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert (flag["--nnodes"], flag["--node-rank"], flag["--master-addr"], flag["--master-port"]) == (
        "4", "2", "node0", "6000",
    )  # fmt: skip
    assert flag["--nproc-per-node"] == "4" and flag["--tp"] == "2"


def test_missing_data_is_an_error():
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "160M_bsl.sh")], env={**env, "TORCHRUN": "echo"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
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
