"""benchmarks/bench_tokenize.py runs end to end at a tiny size for every tokenizer family and prints its one
table: every tool that can run here (Megatron-LM's fast path needs a checkout: skipped with the
reason), outputs checked against the classic baseline. The one tiny run of this benchmark
(tests/test_benchmarks.py counts on it)."""

import os
import subprocess
import sys

import pytest

from tests.utils import REPO


@pytest.mark.slow
def test_tokenize_benchmark_tiny(tmp_path, corpus_jsonl):
    pytest.importorskip("gigatoken")
    cmd = [
        sys.executable,
        "benchmarks/bench_tokenize.py",
        "--tiny",
        "--corpus",
        corpus_jsonl,
        "--workdir",
        str(tmp_path),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MEGATRON_LM", "MEGATRON_PYTHON")}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        f: [line for line in out.stdout.splitlines() if line.startswith(f"| {f} (")]
        for f in ("sentencepiece", "gpt2", "llama3")
    }
    for family, fam in rows.items():
        tools = [r.split(" | ")[1] for r in fam]
        ours = ["lqs tokenize", "lqs tokenize --no-gigatoken"]
        ours += ["lqs tokenize --no-gigatoken --no-word-cache"] if family == "sentencepiece" else []
        assert tools[1:] == ["Megatron-LM fast", "gigatoken", *ours], (family, tools)
        assert fam[0].endswith("| reference |") and "skipped: no Megatron-LM checkout given" in fam[1]
        for row in fam[3:]:  # every encoding of ours gives the classic output
            assert row.endswith("| identical |"), row
        assert "| gigatoken |" in fam[3], fam[3]  # the default encoding, where it gives the exact ids
    assert " | word cache | " in rows["sentencepiece"][4] and " | backend | " in rows["gpt2"][4]
    # gigatoken applies no post-processor: the Llama-3 template's BOS is missing, and the table says so
    assert rows["gpt2"][2].endswith("| identical |")
    assert rows["llama3"][2].endswith("documents: first id missing (BOS) |"), rows["llama3"][2]
