"""The kernels sit at the bottom: no module of ``lqs_megatron/kernels`` imports anything else of
``lqs_megatron`` (function-level imports included) but the leaf ``errors`` module, and differentiating
the torch reference under tp asks for the parallel layer's reduction instead of importing it."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

from lqs_megatron.kernels import per_example_loss

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "lqs_megatron" / "kernels"
ALLOWED = ("lqs_megatron.kernels", "lqs_megatron.errors")  # errors.py imports nothing of the package


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_kernels_import_nothing_above_them():
    files = sorted(KERNELS.glob("*.py"))
    assert len(files) >= 8
    upward = {
        f.name: m for f in files for m in _imports(f) if m.startswith("lqs_megatron") and not m.startswith(ALLOWED)
    }
    assert not upward, upward


def test_differentiating_the_reference_under_tp_needs_tp_reduce():
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(5, 4)
    with pytest.raises(ValueError, match="tp_reduce"):
        per_example_loss(h, w, torch.randint(0, 5, (2, 3)), torch.ones(2, 3), vocab_size=5, tp_group=object())
