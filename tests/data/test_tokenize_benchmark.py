"""benchmarks/tokenize.py runs end to end at a tiny size and prints its one table: every tool that can
run here (Megatron-LM's fast path needs a checkout: skipped with the reason), outputs checked
against the classic baseline."""

import os
import subprocess
import sys

import pytest

from tests.utils import REPO


@pytest.mark.slow
def test_tokenize_benchmark_tiny(tmp_path, corpus_jsonl):
    pytest.importorskip("gigatoken")
    cmd = [sys.executable, "benchmarks/tokenize.py", "--tiny", "--families", "gpt2", "--corpus", corpus_jsonl]
    env = {k: v for k, v in os.environ.items() if k not in ("MEGATRON_LM", "MEGATRON_PYTHON")}
    out = subprocess.run(cmd + ["--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| gpt2")]
    assert len(rows) == 5, out.stdout
    assert "skipped: no Megatron-LM checkout given" in rows[1]
    for row in rows[2:]:  # gigatoken, lqs tokenize (gigatoken), --no-gigatoken (backend)
        assert row.endswith("| identical |"), row
    assert "| gigatoken |" in rows[3] and "| backend |" in rows[4]
