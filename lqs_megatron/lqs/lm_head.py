"""The LM head's part of the per-example statistics pass, fused with the loss.

The head ``logits = h W^T`` is a linear layer whose output gradient for example ``n`` is
``dlogits_nt = w_nt (softmax(logits_nt) - onehot(y_nt))`` (``w_nt = m_nt / sum_t m_nt``). One
pass over chunks of **whole examples** (so every example's rows meet in one call) does, per
chunk:

1. ``logits = h W^T`` (one GEMM; float32, float64 for float64 inputs), the global logsumexp
   (all-reduced over the tp group when the vocabulary is sharded) and the losses;
2. ``dlogits`` in place of the logits;
3. ``dhidden = dlogits W`` (one GEMM), kept for the backward;
4. ``<G_n, Lambda_W>`` and ``|G_n|^2`` by :func:`~lqs_megatron.kernels.grad_stats.grad_stats_linear`
   with ``A = h``, ``D = dlogits`` (direct or ghost, Triton on CUDA): the FLOPs of the
   weight-gradient GEMM a plain backward would do.

So the head costs the three GEMMs of a plain forward+backward (logits, ``dhidden``, ``dW``),
holds one chunk of logits at a time (about the size of the hidden states, at least one
example) and saves only ``dhidden`` for the backward (no logits graph). The autograd
function returns the per-example losses; its backward scales the saved ``dhidden`` by the
upstream gradient (1 for ``losses.sum()``). On CUDA the row logsumexp and the in-place
``dlogits`` are the Triton helpers of ``kernels/per_example_loss.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lqs_megatron.kernels._dispatch import acc_dtype, mm_acc, use_triton
from lqs_megatron.kernels.grad_stats import grad_stats_linear
from lqs_megatron.kernels.per_example_loss import row_dlogits_, row_lse


def _lse_torch(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, tp_group):
    """``(lse [rows], target logit [rows])`` of this shard's logits rows, global over the tp group."""
    n = logits.shape[1]
    local = labels - vocab_start
    inside = (local >= 0) & (local < n)
    tgt = torch.where(inside, logits.gather(1, local.clamp(0, max(n - 1, 0)).unsqueeze(1)).squeeze(1), 0.0)
    if tp_group is None:
        return torch.logsumexp(logits, 1), tgt
    m = logits.amax(1) if n else logits.new_full((logits.shape[0],), -1e30)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    both = torch.stack([torch.exp(logits - m.unsqueeze(1)).sum(1), tgt])
    dist.all_reduce(both, group=tp_group)
    return m + torch.log(both[0]), both[1]


def _dlogits_torch_(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, w: torch.Tensor, vocab_start: int):
    """In place: ``logits <- w * (softmax - onehot)``."""
    logits.sub_(lse.unsqueeze(1)).exp_()
    local = labels - vocab_start
    rows = torch.nonzero((local >= 0) & (local < logits.shape[1])).squeeze(1)
    logits[rows, local[rows]] -= 1.0
    return logits.mul_(w.unsqueeze(1))


class _LossAndStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, mask, lam, vocab_size, vocab_start, tp_group, backend, out, lse_out):
        B, T, d = hidden.shape
        dt = acc_dtype(hidden, weight)
        triton = use_triton(backend, hidden, weight)
        n_valid = min(max(vocab_size - vocab_start, 0), weight.shape[0])
        W = weight[:n_valid]
        lam_w = lam[:n_valid]
        m = mask.to(dt)
        w_all = m / m.sum(1, keepdim=True).clamp_min(torch.finfo(dt).tiny)  # [B, T]
        labels = torch.where(mask != 0, labels, torch.zeros_like(labels))
        length = ((mask != 0) * torch.arange(1, T + 1, device=mask.device)).amax(1)  # rows in use per example
        losses = torch.zeros(B, dtype=dt, device=hidden.device)
        dh = torch.zeros_like(hidden)
        # Chunks of whole examples, the same on every tp rank (their collectives must match).
        # Liger's rule: a chunk of logits about as large as the hidden states, at least one example.
        step = max(1, (B * T * d) // (max(int(length.max()), 1) * weight.shape[0]))
        for s in range(0, B, step):
            e = min(B, s + step)
            t = max(int(length[s:e].max()), 1)
            h = hidden[s:e, :t]
            rows = h.reshape(-1, d)
            lab = labels[s:e, :t].reshape(-1)
            w = w_all[s:e, :t].reshape(-1)
            logits = mm_acc(rows, W.T, dt)  # [rows, n_valid]
            lse, tgt = (row_lse if triton else _lse_torch)(logits, lab, vocab_start, tp_group)
            losses[s:e] = ((lse - tgt) * w).view(e - s, t).sum(1)
            lse_out[s:e, :t] = lse.view(e - s, t).to(lse_out.dtype)
            dl = (row_dlogits_ if triton else _dlogits_torch_)(logits, lab, lse, w.to(logits.dtype), vocab_start)
            dl = dl.to(hidden.dtype)
            dh[s:e, :t] = mm_acc(dl, W, dt).view(e - s, t, d).to(hidden.dtype)
            dot, sq = grad_stats_linear(h, dl.view(e - s, t, n_valid), lam_w, mask[s:e, :t], backend=backend)
            out[0, s:e] += dot.to(out.dtype)
            out[1, s:e] += sq.to(out.dtype)
        ctx.save_for_backward(dh)
        return losses

    @staticmethod
    def backward(ctx, g):
        (dh,) = ctx.saved_tensors
        return (dh * g.to(dh.dtype)[:, None, None],) + (None,) * 10


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses [B], dot [B], sqnorm [B], lse [B, T])``: per-example losses (differentiable wrt ``hidden``; pass
    ``hidden`` through ``copy_to_region`` under tp) and this shard's partial head statistics
    (sum them over the tp group), and the global logsumexp of every row (0 past each example's
    last real position). ``weight``/``lam``: this rank's ``[V_local, d]`` shard."""
    out = torch.zeros(2, hidden.shape[0], dtype=torch.float64, device=hidden.device)
    lse = torch.zeros(hidden.shape[:2], dtype=acc_dtype(hidden, weight), device=hidden.device)
    losses = _LossAndStats.apply(
        hidden, weight.detach(), labels, loss_mask, lam, vocab_size, vocab_start, tp_group, backend, out, lse
    )
    return losses, out[0], out[1], lse
