"""Per-example gradient statistics of the LM head, chunked over the vocabulary.

The head's per-example gradient is ``G_n = sum_t dlogits_nt^T h_nt`` (``[V_local, d]``) with
``dlogits_nt = w_nt (softmax(h_nt W^T) - onehot(y_nt))`` and ``w_nt = m_nt / sum_t m_nt``: the
output gradient is ``B x T x V``, too big to hold. For each chunk of ``V_c`` vocabulary rows this
recomputes the chunk's logits (one GEMM), turns them into ``dlogits`` in place with the global
logsumexp from the loss forward (the Triton kernel of ``per_example_loss``), and feeds
``(A = h, D = dlogits_chunk, Lambda_chunk)`` to the linear-layer statistics: the rows of ``G_n``
split over vocabulary chunks, so ``<G_n, Lambda>`` and ``|G_n|^2`` are sums over chunks.

Under tensor parallelism pass this rank's shard (``weight``, ``lam_weight``, ``vocab_start``) and the
global ``lse`` (from ``per_example_loss(..., tp_group=..., return_lse=True)``): the results are this
shard's partial sums; all-reduce them over the tp group.
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._dispatch import acc_dtype, mm_acc, use_triton
from lqs_megatron.kernels._triton import triton
from lqs_megatron.kernels.grad_stats import choose_method, grad_stats_linear_reference, linear_direct_forward
from lqs_megatron.kernels.per_example_loss import _prepare, row_dlogits_


def lm_head_stats_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    row_w: torch.Tensor,
    lam: torch.Tensor,
    lse: torch.Tensor,
    n_valid: int,
    vocab_start: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path: rows with ``row_w != 0`` compacted per example, then per vocabulary chunk a GEMM,
    the in-place ``dlogits`` kernel and the fused direct statistics kernel. float32 ``(dot, sq)``."""
    B, T, d = hidden.shape
    dev = hidden.device
    active = torch.nonzero(row_w).squeeze(1)
    count = torch.bincount(torch.div(active, T, rounding_mode="floor"), minlength=B)
    row_start = (torch.cumsum(count, 0) - count).to(torch.int32)
    row_count = count.to(torch.int32)
    h = hidden.reshape(B * T, d)[active].contiguous()
    lab, z, w = labels.reshape(-1)[active], lse.reshape(-1)[active].float(), row_w[active].float()
    dot = torch.zeros(B, device=dev, dtype=torch.float32)
    sq = torch.zeros_like(dot)
    vc = max(64, triton.cdiv(d, 64) * 64)  # a chunk of dlogits about the size of the hidden states
    for v0 in range(0, n_valid, vc):
        v1 = min(n_valid, v0 + vc)
        dl = row_dlogits_(mm_acc(h, weight[v0:v1].T), lab, z, w, vocab_start + v0).to(h.dtype)
        cd, cs = linear_direct_forward(h, dl, lam[v0:v1].contiguous(), row_start, row_count)
        dot += cd
        sq += cs
    return dot, sq


def lm_head_grad_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam_weight: torch.Tensor,
    lse: torch.Tensor,
    vocab_size: int | None = None,
    vocab_start: int = 0,
    method: str = "auto",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(<G_n, Lambda>, |G_n|_F^2)`` of the LM head weight (this rank's shard).

    Args:
        hidden, weight, labels, loss_mask, vocab_size, vocab_start: as for ``per_example_loss``.
        lam_weight: ``Lambda`` for this shard of the head weight, ``[V_local, d]`` (float32).
        lse: the global logsumexp ``[B, T]`` returned by ``per_example_loss(..., return_lse=True)``.
        method: torch path: ``"auto"`` (:func:`~lqs_megatron.kernels.grad_stats.choose_method` with
            ``T, d, V_local``), ``"direct"`` or ``"ghost"``; the Triton path is always direct.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``(dot [B], sqnorm [B])``, float32 (float64 for float64 inputs on the torch path); partial
        over the tp shards.
    """
    if tuple(lam_weight.shape) != tuple(weight.shape):
        raise ValueError(f"lam_weight must have weight's shape {tuple(weight.shape)}, got {tuple(lam_weight.shape)}")
    if tuple(lse.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"lse must be [B, T] = {tuple(hidden.shape[:2])}, got {tuple(lse.shape)}")
    triton_path = use_triton(backend, hidden, weight, lam_weight)
    if triton_path and method == "ghost":
        raise ValueError('the Triton path computes the LM head statistics directly; method="ghost" is torch-only')
    if not triton_path:
        return lm_head_grad_stats_reference(
            hidden, weight, labels, loss_mask, lam_weight, lse, vocab_size, vocab_start, method
        )
    V_local = weight.shape[0]
    n_valid = V_local if vocab_size is None else min(max(vocab_size - vocab_start, 0), V_local)
    if n_valid == 0:
        z = torch.zeros(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        return z, z.clone()
    row_w, _ = _prepare(hidden, weight, labels, loss_mask, vocab_size, vocab_start, None)
    return lm_head_stats_forward(hidden, weight, labels, row_w, lam_weight, lse, n_valid, vocab_start)


def lm_head_grad_stats_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lam_weight: torch.Tensor,
    lse: torch.Tensor,
    vocab_size: int | None = None,
    vocab_start: int = 0,
    method: str = "auto",
    chunk_bytes: int = 16 << 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch :func:`lm_head_grad_stats`: dense ``[B, T, V_c]`` dlogits per vocabulary chunk;
    direct sums the chunks' ``grad_stats_linear_reference``; ghost accumulates ``sum_c D_c D_c^T``
    (``[B, T, T]``) for the norm."""
    B, T, d = hidden.shape
    V_local = weight.shape[0]
    dt = acc_dtype(hidden, weight, lam_weight)
    dot = torch.zeros(B, dtype=dt, device=hidden.device)
    sq = torch.zeros_like(dot)
    n_valid = V_local if vocab_size is None else min(max(vocab_size - vocab_start, 0), V_local)
    if n_valid == 0:
        return dot, sq
    row_w, _ = _prepare(hidden, weight, labels, loss_mask, vocab_size, vocab_start, None)
    if method == "auto":
        method = choose_method(T, d, V_local)
    active = torch.nonzero(row_w).squeeze(1)
    h = hidden.to(dt)
    h_act = h.reshape(B * T, d)[active]
    lab = labels.reshape(-1)[active] - vocab_start
    z, w = lse.reshape(-1)[active].to(dt), row_w[active].to(dt)
    gram_d = torch.zeros(B, T, T, dtype=dt, device=hidden.device) if method == "ghost" else None
    vc = max(1, chunk_bytes // (B * T * torch.finfo(dt).bits // 8))
    for v0 in range(0, n_valid, vc):
        v1 = min(n_valid, v0 + vc)
        p = torch.exp(h_act @ weight[v0:v1].to(dt).T - z.unsqueeze(1))
        hit = (lab >= v0) & (lab < v1)
        p[hit, lab[hit] - v0] -= 1.0
        dl = torch.zeros(B * T, v1 - v0, dtype=dt, device=hidden.device)
        dl[active] = w.unsqueeze(1) * p
        dl = dl.view(B, T, v1 - v0)
        if gram_d is None:
            cd, cs = grad_stats_linear_reference(h, dl, lam_weight[v0:v1], method="direct")
            sq += cs
        else:
            cd = ((h @ lam_weight[v0:v1].to(dt).T) * dl).sum((1, 2))
            gram_d += torch.bmm(dl, dl.transpose(1, 2))
        dot += cd
    if gram_d is not None:
        sq = (torch.bmm(h, h.transpose(1, 2)) * gram_d).sum((1, 2))
    return dot, sq
