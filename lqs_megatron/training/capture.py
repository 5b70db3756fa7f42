"""Per-example capture: forward hooks that hold a layer's input and see its output gradient, weights frozen.

The one hook implementation behind both uses of per-example gradient statistics: ``lqs annotate``'s
``<g_n, lambda>`` and ``|g_n|^2`` (``lqs/stats.py``) and online data selection during pretraining
(``training/online.py``). A forward with every parameter frozen (:func:`frozen`) and a backward of the
summed per-example losses computes activation gradients only; :func:`capture_hook` keeps what a
layer's forward saw and hands it, with the layer's output gradient ``D``, to a callback when ``D``
arrives. Examples are independent (causal attention within an example, right padding), so the
output gradient of example ``n`` in that backward is the one of its own loss ``l_n``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def lm_head(model: nn.Module) -> tuple[torch.Tensor, int, object]:
    """``(weight [V_local, d], vocab_start, tp_group)`` of the model's output head."""
    out = model.output
    return out.weight, int(getattr(out, "vocab_start", 0)), getattr(out, "tp_group", None)


def bias_stats(grad: torch.Tensor, lam_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(<g_n, lambda_b>, |g_n|^2)`` of a linear bias from the layer's output gradient ``[B, T, d]``."""
    dt = torch.float64 if grad.dtype == torch.float64 else torch.float32
    g = grad.to(dt).sum(1)  # [B, d]: the per-example bias gradient
    return g @ lam_b.to(dt), g.square().sum(1)


def capture_hook(keep, stats, add, detach_output: bool):
    """The forward hook of one module: hold ``keep(mod, input)`` and, when the output's gradient arrives,
    call ``add(*item)`` for each item of ``stats(kept, D)`` and drop what was held. ``keep`` returning
    None: nothing is held and no gradient hook is set. ``detach_output``: the module's output is replaced
    by a leaf that requires grad (the embedding, whose integer input leaves no graph with frozen weights)."""

    def fwd(mod, args, out):
        held = [keep(mod, args[0])]
        if held[0] is None:
            return None
        if detach_output:
            out = out.detach().requires_grad_()

        def bwd(grad: torch.Tensor) -> None:
            for item in stats(held.pop(), grad):
                add(*item)

        out.register_hook(bwd)
        return out if detach_output else None

    return fwd


def as_computed(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype a matmul under the active autocast multiplies it in (bf16 runs), else as is."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return x.to(torch.get_autocast_dtype(dev))
    return x


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Parameters do not require grad inside (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
