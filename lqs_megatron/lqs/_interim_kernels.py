"""INTERIM torch implementations of the loss-side kernels the engine needs, until
``lqs_megatron/kernels/per_example_loss.py`` lands (then this file is deleted).

- :func:`per_example_loss`: per-example masked mean cross-entropy of ``hidden @ W^T`` over a
  (possibly vocab-sharded) head, plain torch, twice differentiable (HVPs go through it).
- :func:`lm_head_loss_and_stats`: the LM head's part of the per-example statistics pass, fused
  with the loss: one autograd op whose forward returns the per-example losses and, per
  example, ``<G_n, Lambda_W>`` and ``|G_n|^2`` of the head's weight gradient, and whose
  backward returns the gradient wrt ``hidden`` computed in the forward. Three GEMMs of
  ``T V d`` per example (logits, ``dhidden``, ``G_n``), the same as a plain forward+backward
  of the head (logits, ``dhidden``, ``dW``); one example's ``[T, V]`` logits at a time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lqs_megatron.models.mappings import copy_to_region, group_size, reduce_from_region


def _masked_logits(hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int, vocab_start: int) -> torch.Tensor:
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = (hidden @ weight.T).to(dt)
    v_local = weight.shape[0]
    if vocab_start + v_local > vocab_size:  # padded rows: never a label, excluded from the softmax
        pad = torch.arange(vocab_start, vocab_start + v_local, device=logits.device) >= vocab_size
        logits = logits.masked_fill(pad, float("-inf"))
    return logits


def _target_logit(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int) -> torch.Tensor:
    local = labels - vocab_start
    inside = (local >= 0) & (local < logits.shape[-1])
    tgt = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(inside, tgt, torch.zeros_like(tgt))


def per_example_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
    tp_group=None,
) -> torch.Tensor:
    """``[B]`` per-example ``sum_t m_t CE_t / sum_t m_t``; ``weight`` is this rank's ``[V_local, d]`` shard."""
    tp = group_size(tp_group) > 1
    h = copy_to_region(hidden, tp_group) if tp else hidden
    logits = _masked_logits(h, weight, vocab_size, vocab_start)  # [B, T, V_local]
    if tp:
        m = logits.detach().amax(-1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
        lse = m + reduce_from_region((logits - m.unsqueeze(-1)).exp().sum(-1), tp_group).log()
        tgt = reduce_from_region(_target_logit(logits, labels, vocab_start), tp_group)
    else:
        lse = torch.logsumexp(logits, -1)
        tgt = _target_logit(logits, labels, vocab_start)
    mask = loss_mask.to(logits.dtype)
    return ((lse - tgt) * mask).sum(1) / mask.sum(1)


class _LMHeadLossStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, loss_mask, lam, vocab_size, vocab_start, tp_group, out_dot, out_sq):
        B, T, _ = hidden.shape
        dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        tp = group_size(tp_group) > 1
        losses = torch.empty(B, dtype=dt, device=hidden.device)
        dh = torch.empty_like(hidden)
        w = weight.to(dt)
        lam_ = lam.to(dt)
        n_real = loss_mask.sum(1)
        for n in range(B):
            t = max(int((loss_mask[n] != 0).nonzero().max()) + 1, 1) if n_real[n] > 0 else 1
            h = hidden[n, :t].to(dt)  # [t, d]
            logits = _masked_logits(h, w, vocab_size, vocab_start)  # [t, V_local]
            m = logits.amax(-1)
            if tp:
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
            p = (logits - m.unsqueeze(-1)).exp_()
            z = p.sum(-1)
            tgt = _target_logit(logits, labels[n, :t], vocab_start)
            if tp:
                zt = torch.stack([z, tgt])
                dist.all_reduce(zt, group=tp_group)
                z, tgt = zt[0], zt[1]
            lse = m + z.log()
            c = loss_mask[n, :t].to(dt) / n_real[n].to(dt).clamp_min(1)
            losses[n] = ((lse - tgt) * c).sum()
            delta = p.div_(z.unsqueeze(-1))  # softmax, then minus the one-hot of the label, times m_t / n
            local = labels[n, :t] - vocab_start
            inside = (local >= 0) & (local < w.shape[0])
            rows = inside.nonzero().squeeze(-1)
            delta[rows, local[rows]] -= 1.0
            delta.mul_(c.unsqueeze(-1))
            dh[n, :t] = (delta @ w).to(hidden.dtype)  # this shard's part (summed over tp by copy_to_region)
            dh[n, t:] = 0
            g = delta.T @ h  # [V_local, d]: example n's gradient of this shard of the head
            out_dot[n] += (g * lam_).sum()
            out_sq[n] += g.square().sum()
        ctx.save_for_backward(dh)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (dh,) = ctx.saved_tensors
        return dh * grad_losses.to(dh.dtype)[:, None, None], None, None, None, None, None, None, None, None, None


def lm_head_loss_and_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
    tp_group=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses ``[B]`` (differentiable wrt ``hidden`` only) and this shard's
    ``(<G_n, Lambda_W>, |G_n|^2)`` of the head weight (sum them over the tp group)."""
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    dot = torch.zeros(hidden.shape[0], dtype=dt, device=hidden.device)
    sq = torch.zeros_like(dot)
    h = copy_to_region(hidden, tp_group) if group_size(tp_group) > 1 else hidden
    losses = _LMHeadLossStats.apply(
        h, weight.detach(), labels, loss_mask, lam, vocab_size, vocab_start, tp_group, dot, sq
    )
    return losses, dot, sq
