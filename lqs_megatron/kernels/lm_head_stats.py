"""The LM head's per-example loss, gradient wrt the hidden states and gradient statistics, in one pass.

For the head ``z = h W^T`` (rows of ``W`` at global index ``>= vocab_size`` are padding, left out
of the softmax) and per-example mean cross-entropy

    ``l_n = sum_t w_nt (lse_nt - z_nt[y_nt])``,  ``w_nt = m_nt / sum_t m_nt``,  ``lse_nt = logsumexp_v z_ntv``,

the gradient of ``l_n`` wrt the logits is ``dz_nt = w_nt (softmax(z_nt) - onehot(y_nt))``, so

    ``d l_n / d h_nt = dz_nt W``,   ``G_n = d l_n / d W = sum_t dz_nt^T h_nt``,
    ``dot_n = <G_n, Lambda>``,       ``sq_n = |G_n|_F^2``

(``G_n`` is 0 on the padding rows). One pass over chunks of **whole examples** (every example's
rows meet in one call) does, per chunk:

1. ``z = h W^T`` (one GEMM; float32, float64 for float64 inputs), the global ``lse`` (all-reduced
   over the tp group when the vocabulary is sharded, as Megatron's vocab-parallel cross-entropy)
   and the losses;
2. ``dz`` in place of the logits;
3. ``dhidden = dz W`` (one GEMM), kept for the backward;
4. ``dot_n`` and ``sq_n`` by :func:`~lqs_megatron.kernels.linear_stats.grad_stats_linear` with
   ``A = h``, ``D = dz`` (direct or ghost; always direct on Triton): the FLOPs of the
   weight-gradient GEMM a plain backward would do, never ``G_n`` itself.

So the head costs the three GEMMs of a plain forward+backward (logits, ``dhidden``, ``dW``), holds
one chunk of logits at a time (about the size of the hidden states, at least one example) and keeps
only ``dhidden`` for the backward (no logits graph). ``dz`` is rounded to the input dtype before
the last two GEMMs, as a bf16 backward does.

Tiers: this op has no Triton kernel of its own; it composes the row pieces of
``per_example_loss.py`` (:func:`row_lse`, :func:`row_dlogits_` and their torch twins) and
``linear_stats.py`` (:func:`grad_stats_linear`). :func:`lm_head_loss_and_stats_forward` is the
chunk loop, a thin autograd Function gives the backward (``dhidden`` scaled by the upstream gradient),
and :func:`lm_head_loss_and_stats` is the functional entry point.
:func:`lm_head_loss_and_stats_reference` (the same arguments, ``backend="torch"``) runs the same loop on
the torch twins (torch logsumexp/softmax and ``grad_stats_linear_reference``): the one tests and
benchmarks compare the Triton path with.

Tensor parallelism: pass this rank's shard (``weight``, ``lam``, ``vocab_start``) and route
``hidden`` through the tensor-parallel layer's ``copy_to_region``; the losses and ``lse`` are global,
the statistics are this shard's partial sums (all-reduce them over the tp group).
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._dispatch import acc_dtype, mm_acc, use_triton
from lqs_megatron.kernels.linear_stats import grad_stats_linear
from lqs_megatron.kernels.per_example_loss import (
    prepare_loss_inputs,
    row_dlogits_,
    row_dlogits_reference_,
    row_lse,
    row_lse_reference,
)

# ----------------------------------------------------------------------------- the pass


def chunk_examples(B: int, T: int, max_len: int, d: int, V_local: int) -> int:
    """Examples per chunk of the head pass over ``[B, T, d]`` hidden states whose longest example uses
    ``max_len`` positions, against ``V_local`` vocabulary rows: Liger's rule, a chunk of logits about as
    large as the hidden states, at least one example. The same on every tp rank (their collectives match)."""
    return max(1, (B * T * d) // (max(max_len, 1) * V_local))


def lm_head_loss_and_stats_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam: torch.Tensor,
    row_w: torch.Tensor,
    n_valid: int,
    vocab_start: int,
    tp_group,
    backend: str,
    grad_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The chunk loop (arguments validated by :func:`lm_head_loss_and_stats`; ``row_w [B*T]`` the
    per-position weights ``w_nt``, ``n_valid`` this shard's rows below the vocabulary size).

    Returns ``(losses [B], dot [B], sq [B], lse [B, T], dhidden [B, T, d] or None)``.
    """
    B, T, d = hidden.shape
    dt = acc_dtype(hidden, weight)
    triton = use_triton(backend, hidden, weight)
    W, lam_w = weight[:n_valid], lam[:n_valid]
    w_all = row_w.view(B, T)
    on = loss_mask != 0
    labels = torch.where(on, labels, torch.zeros_like(labels))
    length = (on * torch.arange(1, T + 1, device=hidden.device)).amax(1)  # rows in use per example
    losses = torch.zeros(B, dtype=dt, device=hidden.device)
    lse_out = torch.zeros(B, T, dtype=dt, device=hidden.device)
    stats_dt = acc_dtype(hidden, weight, lam)
    dot = torch.zeros(B, dtype=stats_dt, device=hidden.device)
    sq = torch.zeros_like(dot)
    dh = torch.zeros_like(hidden) if grad_hidden else None
    step = chunk_examples(B, T, int(length.max()), d, weight.shape[0])
    for s in range(0, B, step):
        e = min(B, s + step)
        t = max(int(length[s:e].max()), 1)
        h = hidden[s:e, :t].reshape(-1, d)  # one copy of the chunk's rows, shared by both consumers
        lab = labels[s:e, :t].reshape(-1)
        w = w_all[s:e, :t].reshape(-1)
        logits = mm_acc(h, W.T, dt)  # [rows, n_valid]
        lse, tgt = (row_lse if triton else row_lse_reference)(logits, lab, vocab_start, tp_group)
        losses[s:e] = ((lse - tgt) * w).view(e - s, t).sum(1)
        lse_out[s:e, :t] = torch.where(on[s:e, :t], lse.view(e - s, t), 0.0)
        dl = (row_dlogits_ if triton else row_dlogits_reference_)(logits, lab, lse, w.to(logits.dtype), vocab_start)
        dl = dl.to(hidden.dtype)
        if grad_hidden:
            dh[s:e, :t] = mm_acc(dl, W, dt).view(e - s, t, d).to(hidden.dtype)
        if n_valid:
            A, D = h.view(e - s, t, d), dl.view(e - s, t, n_valid)
            dot[s:e], sq[s:e] = grad_stats_linear(A, D, lam_w, on[s:e, :t], backend=backend)
    return losses, dot, sq, lse_out, dh


class _LossAndStats(torch.autograd.Function):
    """Everything in the forward; the backward scales the saved ``dhidden`` by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, loss_mask, lam, row_w, n_valid, vocab_start, tp_group, backend):
        losses, dot, sq, lse, dh = lm_head_loss_and_stats_forward(
            hidden, weight, labels, loss_mask, lam, row_w, n_valid, vocab_start, tp_group, backend, True
        )
        ctx.save_for_backward(dh)
        ctx.mark_non_differentiable(dot, sq, lse)
        return losses, dot, sq, lse

    @staticmethod
    def backward(ctx, g, _g_dot, _g_sq, _g_lse):
        (dh,) = ctx.saved_tensors
        return (dh * g.to(dh.dtype)[:, None, None],) + (None,) * 9


# ----------------------------------------------------------------------------- public API


def lm_head_loss_and_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
    tp_group=None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss of the LM head with the head weight's per-example gradient statistics.

    Args:
        hidden: final hidden states ``[B, T, d]``; under tp pass them through ``copy_to_region``.
        weight: the head (this rank's vocabulary shard) ``[V_local, d]``, same dtype as ``hidden``.
            Not differentiated (the statistics pass never needs its batch gradient).
        labels: ``[B, T]`` int64 global token ids; anything where ``loss_mask == 0``.
        loss_mask: ``[B, T]`` weights ``m`` (0/1 in LQS); an all-zero example gets 0 everywhere.
        lam: ``Lambda`` for this shard of the head weight, ``[V_local, d]`` (normally float32).
        vocab_size: the true vocabulary; rows at global index ``>= vocab_size`` are padding.
        vocab_start: global index of ``weight``'s first row.
        tp_group: tensor-parallel group over which the vocabulary is sharded (None: no tp).
        backend: ``"auto"`` (Triton on CUDA, the torch reference on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        ``(losses [B], dot [B], sqnorm [B], lse [B, T])``: the losses ``l_n`` (differentiable wrt
        ``hidden``, first order), ``<G_n, Lambda>`` and ``|G_n|_F^2`` (this shard's partial sums:
        all-reduce them over the tp group), and the global logsumexp of every row (0 where
        ``loss_mask`` is 0). Losses and ``lse`` in float32 (float64 for float64 inputs), the
        statistics in float32 (float64 when any input is float64).
    """
    row_w, n_valid = prepare_loss_inputs(hidden, weight, labels, loss_mask, vocab_size, vocab_start, tp_group)
    if tuple(lam.shape) != tuple(weight.shape):
        raise ValueError(f"lam must have weight's shape {tuple(weight.shape)}, got {tuple(lam.shape)}")
    weight = weight.detach()
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _LossAndStats.apply(
            hidden, weight, labels, loss_mask, lam, row_w, n_valid, vocab_start, tp_group, backend
        )
    losses, dot, sq, lse, _ = lm_head_loss_and_stats_forward(
        hidden, weight, labels, loss_mask, lam, row_w, n_valid, vocab_start, tp_group, backend, False
    )
    return losses, dot, sq, lse


def lm_head_loss_and_stats_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
    tp_group=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain torch :func:`lm_head_loss_and_stats` (same arguments and results): the chunk loop on
    :func:`~.per_example_loss.row_lse_reference`, :func:`~.per_example_loss.row_dlogits_reference_`
    and :func:`~.linear_stats.grad_stats_linear_reference`; float64 inputs compute in float64."""
    return lm_head_loss_and_stats(hidden, weight, labels, loss_mask, lam, vocab_size, vocab_start, tp_group, "torch")
