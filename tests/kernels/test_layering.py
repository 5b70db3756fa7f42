"""Differentiating the kernels' torch reference under tp asks for the parallel layer's reduction
instead of importing it (the import layering itself is tests/test_layers.py)."""

from __future__ import annotations

import pytest
import torch

from lqs_megatron.kernels import per_example_loss


def test_differentiating_the_reference_under_tp_needs_tp_reduce():
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(5, 4)
    with pytest.raises(ValueError, match="tp_reduce"):
        per_example_loss(h, w, torch.randint(0, 5, (2, 3)), torch.ones(2, 3), vocab_size=5, tp_group=object())
