"""One CPU thread per process in the scorer tests (in-process and in the `lqs` subprocesses).

The suite shares 2 cores with other test processes; OpenMP's spinning worker threads then
make tiny-model steps ten times slower than one thread does. torchrun does the same for
multi-process runs (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
