"""tools/: one thin wrapper per step of the original LQS instructions, each an `lqs` command."""

import json
import subprocess
import sys

import pytest

from tests.utils import REPO

WRAPPED = {
    "process_cc": "lqs tokenize",
    "convert_tokenization": "lqs retokenize",
    "process_lima": "lqs tokenize-target",
    "sample_proxy_data": "lqs sample-proxy",
    "prepare_scorer_train_data": "lqs prepare-scorer-data",
    "bin2jsonl": "lqs export-jsonl",
}


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("tool,command", sorted(WRAPPED.items()))
def test_wrapper_is_the_lqs_command(tool, command):
    proc = _run(f"tools/{tool}.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {command} "), proc.stdout[:200]


def test_get_checkpoints_checks_a_local_hf_dir(tmp_path, tiny_tokenizer):
    import transformers

    cfg = transformers.MistralConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.MistralForCausalLM(cfg).save_pretrained(tmp_path / "m")
    transformers.AutoTokenizer.from_pretrained(tiny_tokenizer).save_pretrained(tmp_path / "m")
    proc = _run("tools/get_checkpoints.py", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["vocab"] == 512 and info["parameters"] > 0 and "mistral" in info["kind"]
    proc = _run("tools/get_checkpoints.py", str(tmp_path / "missing"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_proxy_data_script_launches_lqs_annotate_under_torchrun(tmp_path):
    """scripts/proxy_data/160M.sh (the original name) runs the annotation launcher: torchrun, the
    papers' defaults, multi-node variables, extra flags passed through."""
    import os

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text('#!/bin/sh\necho torchrun "$@"\n')
    (fake / "torchrun").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "MODEL": "m",
        "TRAIN": "t",
        "TARGET": "g",
        "PROXY": "p",
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "node0",
    }
    proc = subprocess.run(
        ["bash", "scripts/proxy_data/160M.sh", "--seed", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out[:1] == ["torchrun"] and "annotate" in out and out[-2:] == ["--seed", "3"]
    flags = dict(zip(out[::1], out[1::1]))
    assert flags["--nnodes"] == "2" and flags["--node-rank"] == "1" and flags["--master-addr"] == "node0"
    assert flags["--steps"] == "100" and flags["--interval"] == "10" and flags["--lr"] == "0.008"
    assert flags["--global-batch-size"] == "16" and flags["--max-length"] == "1024" and flags["--model"] == "m"
    missing = subprocess.run(
        ["bash", "scripts/proxy_data/160M.sh"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "MODEL": ""},
        timeout=60,
    )
    assert missing.returncode != 0 and "MODEL" in missing.stderr
