"""scripts/data: a Slurm job array and a torchrun job, each shard one task/rank, merged into one run's output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lqs_megatron.cli import main
from tests.data.test_formats import make_rows, write_container
from tests.utils import REPO

SCRIPTS = os.path.join(REPO, "scripts", "data")
LQS = f"{sys.executable} -m lqs_megatron"


def _bash(script, *args, env=None, check=True):
    full = {**os.environ, "OMP_NUM_THREADS": "1", "LQS": LQS, **(env or {})}
    for k in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        if env is None or k not in env:
            full.pop(k, None)
    proc = subprocess.run(
        ["bash", os.path.join(SCRIPTS, script), *map(str, args)],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _corpus(tmp_path):
    rows = make_rows(11, 40)
    write_container(tmp_path / "a.jsonl", rows[:25], "jsonl")
    write_container(tmp_path / "b.parquet", rows[25:], "parquet", row_group=4)
    return [str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")]


def _read(prefix):
    return [open(f"{prefix}{e}", "rb").read() for e in (".bin", ".idx")]


@pytest.mark.slow
def test_slurm_array_tasks_then_merge_equal_one_run(tmp_path, tiny_tokenizer):
    inputs = _corpus(tmp_path)
    step = ["tokenize", "--input", *inputs, "--tokenizer", tiny_tokenizer]
    assert main([*step, "--out", str(tmp_path / "one"), "--workers", "0"]) == 0
    for task in (3, 4):  # --array=3-4: the shard is the task id minus SLURM_ARRAY_TASK_MIN
        env = {
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_MIN": "3",
            "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_CPUS_PER_TASK": "1",
        }
        proc = _bash("slurm_array.sh", *step, "--out", tmp_path / "sh", env=env)
        assert f"shard {task - 3} of 2" in proc.stderr
    assert os.path.exists(tmp_path / "sh.shard-00001-of-00002.bin")
    assert main(["merge", "--shards", str(tmp_path / "sh")]) == 0
    assert _read(tmp_path / "sh") == _read(tmp_path / "one")


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ranks_are_shards_and_node0_merges(tmp_path, tiny_tokenizer):
    inputs = _corpus(tmp_path)
    step = ["tokenize", "--input", *inputs, "--tokenizer", tiny_tokenizer]
    assert main([*step, "--out", str(tmp_path / "one"), "--workers", "0"]) == 0
    env = {
        "OUT": str(tmp_path / "tr"),
        "PROCS_PER_NODE": "2",
        "WORKERS": "1",
        "MASTER_PORT": "29731",
        "TORCHRUN": os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "MERGE_WAIT": "30",
    }
    _bash("torchrun_shards.sh", *step, "--out", tmp_path / "tr", env=env)
    assert _read(tmp_path / "tr") == _read(tmp_path / "one")


def test_script_guards():
    proc = _bash("slurm_array.sh", "tokenize", "--input", "x", check=False)
    assert proc.returncode != 0 and "run this through sbatch --array" in proc.stderr
    env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    proc = _bash("slurm_array.sh", "pretrain", "--data", "x", env=env, check=False)
    assert proc.returncode == 2 and "'pretrain' is not a sharded step" in proc.stderr
    proc = _bash("torchrun_shards.sh", "score", env={"OUT": "o"}, check=False)
    assert proc.returncode == 2 and "'score' is not sharded by torchrun ranks" in proc.stderr
    env = {
        "OUT": "data/cc",
        "TORCHRUN": "echo",
        "LQS": "echo lqs",
        "NNODES": "4",
        "NODE_RANK": "0",
        "MASTER_ADDR": "node0",
        "PROCS_PER_NODE": "4",
        "WORKERS": "3",
    }
    out = _bash("torchrun_shards.sh", "tokenize", "--input", "x", "--out", "data/cc", env=env).stdout.splitlines()
    assert out[0].split() == [
        "--nnodes",
        "4",
        "--node-rank",
        "0",
        "--nproc-per-node",
        "4",
        "--master-addr",
        "node0",
        "--master-port",
        "29500",
        "-m",
        "lqs_megatron",
        "tokenize",
        "--input",
        "x",
        "--out",
        "data/cc",
        "--workers",
        "3",
    ]
    assert out[1] == "lqs merge --shards data/cc --wait 86400"
    out = _bash("torchrun_shards.sh", "tokenize", "--out", "data/cc", env={**env, "NODE_RANK": "1"}).stdout
    assert "merge" not in out  # only node 0 merges
