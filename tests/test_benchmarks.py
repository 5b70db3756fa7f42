"""Every benchmark script starts (``--help``) when run directly as ``python benchmarks/X.py``:
the way users run them, where benchmarks/tokenize.py could shadow the standard library."""

import glob
import os
import subprocess
import sys

from tests.utils import REPO


def test_benchmark_scripts_start():
    scripts = sorted(p for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py")) if not p.endswith("_harness.py"))
    assert len(scripts) >= 7
    procs = {p: subprocess.Popen([sys.executable, p, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for p in scripts}  # fmt: skip
    failed = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in out:
            failed[os.path.basename(p)] = err[-500:]
    assert not failed, failed
