"""Fused linear + cross-entropy returning one mean loss per example, never holding ``B x T x V`` logits.

``l_n = sum_t m_nt CE_nt / sum_t m_nt`` with ``CE_nt = lse(h_nt W^T) - (h_nt W^T)[y_nt]``. The
tokens with ``m != 0`` are processed in chunks of rows: a GEMM gives the chunk's float32 logits
``[rows, V_local]``, one Triton kernel reduces each row to (max, sum-exp, target logit), and, when
gradients are needed, a second kernel overwrites the logits in place with
``dlogits = w_t (softmax - onehot)`` (``w_t = m_t / sum m``), from which two GEMMs give the chunk's
gradient wrt the hidden states and its contribution to the gradient wrt ``W`` (Liger-style:
gradients in the forward, so a forward+backward costs the three GEMMs of an unfused one and a
chunk of logits of memory).

Vocabulary padding: rows of ``weight`` at global index ``>= vocab_size`` are left out of the
softmax (their gradient is 0), so the loss equals the unpadded model's.

Tensor parallelism (Megatron's vocab-parallel cross-entropy): ``weight`` is this rank's shard
starting at global row ``vocab_start``. Per chunk the rows' maxima are all-reduced (MAX), then the
rescaled sum-exp and the target logit (SUM) over ``tp_group``. The gradient wrt ``hidden`` is this
shard's partial contribution: route ``hidden`` through the tensor-parallel layer's ``copy_to_region``
(backward all-reduce), as Megatron does; the gradient wrt ``weight`` is exact for the shard. The
torch reference takes that layer's ``reduce_from_region`` as ``tp_reduce`` (kernels import nothing
above them).

Pieces shared with :mod:`.lm_head_stats`: the row launchers :func:`row_lse` / :func:`row_dlogits_`,
their torch twins :func:`row_lse_reference` / :func:`row_dlogits_reference_`, and
:func:`prepare_loss_inputs`.

The Triton autograd Function is first-order only (its backward is ``once_differentiable``). The torch
reference :func:`per_example_loss_reference` is made of plain differentiable ops and is twice
differentiable (double backward, and forward-over-reverse without tp), for Hessian-vector products.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lqs_megatron.errors import LQSError
from lqs_megatron.kernels._dispatch import acc_dtype, mm_acc, use_triton
from lqs_megatron.kernels._launch import Launch
from lqs_megatron.kernels._triton import tl, triton

# Sentinel for "no column seen yet": finite, so that exp(m_local - m_global) is 0, not NaN.
NEG_INIT = -1.0e30


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _row_lse_kernel(X, stride_x, labels, out_max, out_sumexp, out_target, n_cols, vocab_start,
                    BLOCK_V: tl.constexpr):  # fmt: skip
    """Per row ``r`` of float32 logits ``X [rows, n_cols]`` (online, in blocks of ``BLOCK_V`` columns):
    ``m_r = max_v X[r, v]``, ``s_r = sum_v exp(X[r, v] - m_r)``, and the target logit
    ``X[r, y_r - vocab_start]`` if the label falls in this shard, else 0. An empty row gives
    ``m = -1e30, s = 0``."""
    r = tl.program_id(0).to(tl.int64)
    row = X + r * stride_x
    m = tl.full((), -1.0e30, tl.float32)
    s = tl.zeros((), tl.float32)
    for v0 in range(0, n_cols, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row + offs, mask=offs < n_cols, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new))
        m = m_new
    lab = tl.load(labels + r) - vocab_start
    inside = (lab >= 0) & (lab < n_cols)
    target = tl.load(row + lab, mask=inside, other=0.0)
    tl.store(out_max + r, m)
    tl.store(out_sumexp + r, s)
    tl.store(out_target + r, target)


@triton.jit
def _row_dlogits_kernel(X, stride_x, labels, lse, scale, n_cols, vocab_start, BLOCK_V: tl.constexpr):
    """In place, per row ``r``: ``X[r, v] <- scale_r * (exp(X[r, v] - lse_r) - [v == y_r - vocab_start])``,
    the gradient of ``scale_r * CE_r`` wrt the row's logits (``lse_r`` is the global logsumexp)."""
    r = tl.program_id(0).to(tl.int64)
    row = X + r * stride_x
    c = tl.load(scale + r)
    z = tl.load(lse + r)
    lab = tl.load(labels + r) - vocab_start
    for v0 in range(0, n_cols, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < n_cols
        p = tl.exp(tl.load(row + offs, mask=mask, other=0.0) - z)
        p = tl.where(offs == lab, p - 1.0, p)
        tl.store(row + offs, c * p, mask=mask)


# ----------------------------------------------------------------------------- launchers


def row_lse_launch(n_rows: int, n_cols: int, label_dtype: torch.dtype = torch.int64) -> Launch:
    """The :func:`_row_lse_kernel` launch for ``[n_rows, n_cols]`` float32 logits: one program per row."""
    return Launch(_row_lse_kernel, (n_rows,), {"BLOCK_V": _block_v(n_cols)},
                  {"X": torch.float32, "labels": label_dtype, "out_max": torch.float32,
                   "out_sumexp": torch.float32, "out_target": torch.float32}, num_warps=8)  # fmt: skip


def row_dlogits_launch(n_rows: int, n_cols: int, label_dtype: torch.dtype = torch.int64) -> Launch:
    """The :func:`_row_dlogits_kernel` launch for ``[n_rows, n_cols]`` float32 logits."""
    return Launch(_row_dlogits_kernel, (n_rows,), {"BLOCK_V": _block_v(n_cols)},
                  {"X": torch.float32, "labels": label_dtype, "lse": torch.float32, "scale": torch.float32},
                  num_warps=8)  # fmt: skip


def _block_v(n_cols: int) -> int:
    return max(16, min(4096, triton.next_power_of_2(max(n_cols, 1))))


def row_lse(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, tp_group=None):
    """Global ``(lse [rows], target logit [rows])`` of float32 logits rows of this vocab shard."""
    rows, n_cols = logits.shape
    m = torch.empty(rows, device=logits.device, dtype=torch.float32)
    s, tgt = torch.empty_like(m), torch.empty_like(m)
    if rows:
        row_lse_launch(rows, n_cols, labels.dtype)(logits, logits.stride(0), labels, m, s, tgt, n_cols, vocab_start)
    if tp_group is not None:
        gm = m.clone()
        dist.all_reduce(gm, op=dist.ReduceOp.MAX, group=tp_group)
        both = torch.stack([s * torch.exp(m - gm), tgt])
        dist.all_reduce(both, group=tp_group)
        m, s, tgt = gm, both[0], both[1]
    return m + torch.log(s), tgt


def row_dlogits_(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, vocab_start: int):
    """Overwrite float32 ``logits [rows, V]`` with ``scale_r * (softmax - onehot)``; returns it."""
    rows, n_cols = logits.shape
    if rows and n_cols:
        row_dlogits_launch(rows, n_cols, labels.dtype)(logits, logits.stride(0), labels, lse, scale, n_cols,
                                                       vocab_start)  # fmt: skip
    return logits


def _all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, group=group)
    return x


def row_lse_reference(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, tp_group=None, tp_reduce=None):
    """The torch twin of :func:`row_lse` (any float dtype): ``(lse [rows], target logit [rows])`` of
    this shard's logits rows, global over ``tp_group``. ``tp_reduce(x, group)`` sums the rescaled
    sum-exp and the target logit over the group (default: a plain all-reduce; pass the tp layer's
    ``reduce_from_region`` to differentiate through it). Differentiable wrt ``logits``."""
    rows, n = logits.shape
    local = labels - vocab_start
    inside = (local >= 0) & (local < n)
    if n:
        tgt = torch.where(inside, logits.gather(1, local.clamp(0, n - 1).unsqueeze(1)).squeeze(1), 0.0)
    else:  # a shard holding padding rows only
        tgt = logits.new_zeros(rows)
    if tp_group is None:
        return torch.logsumexp(logits, 1), tgt
    m = logits.detach().amax(1) if n else logits.new_full((rows,), NEG_INIT)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    both = (tp_reduce or _all_reduce_sum)(torch.stack([torch.exp(logits - m.unsqueeze(1)).sum(1), tgt]), tp_group)
    return m + torch.log(both[0]), both[1]


def row_dlogits_reference_(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor,
                           vocab_start: int):  # fmt: skip
    """The torch twin of :func:`row_dlogits_`: in place, ``logits <- scale * (softmax - onehot)``."""
    logits.sub_(lse.unsqueeze(1)).exp_()
    local = labels - vocab_start
    rows = torch.nonzero((local >= 0) & (local < logits.shape[1])).squeeze(1)
    logits[rows, local[rows]] -= 1.0
    return logits.mul_(scale.unsqueeze(1))


def chunk_rows(n_rows: int, n_cols: int, d: int) -> int:
    """Rows per chunk so a chunk of logits holds about as many elements as the hidden states (Liger's rule)."""
    return max(1, triton.next_power_of_2(triton.cdiv(n_rows, max(1, triton.cdiv(n_cols, d)))))


def per_example_loss_forward(
    h2: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    row_w: torch.Tensor,
    n_valid: int,
    vocab_start: int,
    tp_group=None,
    grad_hidden: bool = False,
    grad_weight: bool = False,
):
    """One pass over the rows with ``row_w != 0``: ``h2 [N, d]``, ``labels [N]``, float32 ``row_w [N]``.

    Returns float32 ``ce [N]`` and ``lse [N]`` (0 on skipped rows), and when asked the gradients of
    ``sum_r row_w[r] CE_r``: wrt ``h2`` (``[N, d]``, ``h2``'s dtype; this shard's part) and wrt
    ``weight`` (``[V_local, d]`` float32, zero on padding rows).
    """
    N, d = h2.shape
    dev = h2.device
    ce = torch.zeros(N, device=dev, dtype=torch.float32)
    lse = torch.zeros_like(ce)
    gh = torch.zeros_like(h2) if grad_hidden else None
    gw = torch.zeros(weight.shape, device=dev, dtype=torch.float32) if grad_weight else None
    W = weight[:n_valid]
    active = torch.nonzero(row_w).squeeze(1)
    step = chunk_rows(active.numel(), weight.shape[0], d)  # the same on every tp rank: collectives match
    for s in range(0, active.numel(), step):
        idx = active[s : s + step]
        h = h2[idx]
        lab = labels[idx]
        logits = mm_acc(h, W.T)  # [rows, n_valid] float32
        z, tgt = row_lse(logits, lab, vocab_start, tp_group)
        lse[idx] = z
        ce[idx] = z - tgt
        if grad_hidden or grad_weight:
            dl = row_dlogits_(logits, lab, z, row_w[idx].float(), vocab_start).to(h2.dtype)
            if grad_hidden:
                gh[idx] = mm_acc(dl, W).to(h2.dtype)
            if grad_weight:
                gw[:n_valid] += mm_acc(dl.T, h)
    return ce, lse, gh, gw


class _PerExampleLossFunction(torch.autograd.Function):
    """Loss and gradients in one pass; backward rescales them by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, row_w, n_valid, vocab_start, tp_group):
        B, T, d = hidden.shape
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ce, lse, gh, gw = per_example_loss_forward(
            hidden.reshape(B * T, d), weight, labels.reshape(-1), row_w, n_valid, vocab_start, tp_group, need_h, need_w
        )
        ctx.save_for_backward(gh, gw, hidden, weight, labels, row_w)
        ctx.args = (n_valid, vocab_start, tp_group)
        lse = lse.view(B, T)
        ctx.mark_non_differentiable(lse)
        return (row_w * ce).view(B, T).sum(1), lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, _g_lse):
        gh, gw, hidden, weight, labels, row_w = ctx.saved_tensors
        B, T, d = hidden.shape
        g = g_loss.float()
        grad_h = grad_w = None
        if gh is not None:
            grad_h = (gh.view(B, T, d) * g.view(B, 1, 1)).to(hidden.dtype)
        if gw is not None:
            if bool((g == g[0]).all()):  # the usual case: loss.sum() / loss.mean()
                grad_w = (gw * g[0]).to(weight.dtype)
            else:  # per-example weights: redo the pass with them folded into the row weights
                row_g = (row_w.view(B, T) * g.view(B, 1)).reshape(-1)
                n_valid, vocab_start, tp_group = ctx.args
                h2 = hidden.reshape(B * T, d)
                grad_w = per_example_loss_forward(h2, weight, labels.reshape(-1), row_g, n_valid, vocab_start,
                                                  tp_group, grad_weight=True)[3].to(weight.dtype)  # fmt: skip
        return grad_h, grad_w, None, None, None, None, None


# ----------------------------------------------------------------------------- public API


def prepare_loss_inputs(hidden, weight, labels, loss_mask, vocab_size, vocab_start, tp_group):
    """Validate; return ``(row_w [B*T] float, n_valid)`` with ``row_w = m_t / sum_t m_t`` per example and
    ``n_valid`` the rows of ``weight`` below ``vocab_size``. ``tp_group`` only serves the checks."""
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[2] != weight.shape[1]:
        raise ValueError(f"hidden [B,T,d] and weight [V,d] expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if tuple(labels.shape) != tuple(hidden.shape[:2]) or tuple(loss_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"labels and loss_mask must be [B, T] = {tuple(hidden.shape[:2])}")
    V_local = weight.shape[0]
    if vocab_size is None:
        if tp_group is not None:
            raise ValueError("vocab_size is required with tp_group (the true vocabulary over all shards)")
        vocab_size = vocab_start + V_local
    n_valid = min(max(vocab_size - vocab_start, 0), V_local)
    if tp_group is None and n_valid <= 0:
        raise ValueError(f"no vocabulary row of this weight is below vocab_size={vocab_size}")
    dt = acc_dtype(hidden, weight)
    m = loss_mask.to(dt)
    on = m != 0
    bad = on & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        n, t = (int(i) for i in torch.nonzero(bad)[0])
        raise LQSError(
            f"label id {int(labels[n, t])} at example {n}, position {t} is outside the vocabulary [0, {vocab_size})"
        )
    row_w = (m / m.sum(1, keepdim=True).clamp_min(torch.finfo(dt).tiny)).reshape(-1)
    return row_w, n_valid


def per_example_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    vocab_size: int | None = None,
    vocab_start: int = 0,
    tp_group=None,
    return_lse: bool = False,
    backend: str = "auto",
    tp_reduce=None,
):
    """Per-example mean cross-entropy of the LM head ``logits = hidden @ weight^T``.

    Args:
        hidden: final hidden states ``[B, T, d]`` (bf16 on a GPU, or float32/float64).
        weight: LM head (this rank's vocab shard) ``[V_local, d]``, same dtype as ``hidden``.
        labels: ``[B, T]`` int64 global token ids; any value where ``loss_mask == 0`` (e.g. -100).
        loss_mask: ``[B, T]`` weights ``m`` (0/1 in LQS); an example whose mask is all 0 gets loss 0.
        vocab_size: the true vocabulary (rows at global index ``>= vocab_size`` are padding);
            default: no padding (required with ``tp_group``).
        vocab_start: global index of ``weight``'s first row.
        tp_group: tensor-parallel group over which the vocabulary is sharded (None: no tp).
        return_lse: also return the global logsumexp ``[B, T]`` (not differentiable; float32, float64
            for float64 inputs on the torch path; 0 where the mask is 0). The statistics pass
            gets it, with the losses, from :func:`~lqs_megatron.kernels.lm_head_stats.lm_head_loss_and_stats`.
        backend: ``"auto"`` (Triton on CUDA, torch reference on CPU), ``"triton"`` or ``"torch"``.
        tp_reduce: the tensor-parallel layer's differentiable sum over ``tp_group`` (forward
            all-reduce, backward identity: ``reduce_from_region``); the torch path needs it to
            differentiate under tp (the Triton path reduces with ``torch.distributed`` directly).

    Returns:
        ``loss [B]`` float32 (float64 for float64 inputs on the torch path), or ``(loss, lse)``.
        Differentiable wrt ``hidden`` and ``weight``; the Triton path to first order only.
    """
    if not use_triton(backend, hidden, weight):
        return per_example_loss_reference(hidden, weight, labels, loss_mask, vocab_size, vocab_start, tp_group,
                                          return_lse, tp_reduce)  # fmt: skip
    row_w, n_valid = prepare_loss_inputs(hidden, weight, labels, loss_mask, vocab_size, vocab_start, tp_group)
    labels = labels.contiguous()
    hidden = hidden.contiguous()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, lse = _PerExampleLossFunction.apply(hidden, weight, labels, row_w, n_valid, vocab_start, tp_group)
    else:
        B, T, d = hidden.shape
        ce, lse, _, _ = per_example_loss_forward(
            hidden.reshape(B * T, d), weight, labels.reshape(-1), row_w, n_valid, vocab_start, tp_group
        )
        loss, lse = (row_w * ce).view(B, T).sum(1), lse.view(B, T)
    return (loss, lse) if return_lse else loss


def per_example_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    vocab_size: int | None = None,
    vocab_start: int = 0,
    tp_group=None,
    return_lse: bool = False,
    tp_reduce=None,
    chunk_bytes: int = 16 << 20,
):
    """Plain torch :func:`per_example_loss` (same arguments), twice differentiable.

    Chunks of rows keep the no-grad working set near ``chunk_bytes``; under autograd the chunks'
    logits are kept for the backward as with any torch graph. Computes in float32 (float64 for
    float64 inputs). Under tp the sum-exp and target logit pass through ``tp_reduce`` (the tp
    layer's ``reduce_from_region``: forward all-reduce, backward identity), so gradients follow
    Megatron's convention; without gradients a plain all-reduce serves. For a Hessian-vector
    product under tp by double backward, all-reduce the inner product ``<grad, v>`` over the tp
    group (with ``reduce_from_region``) before differentiating it again.
    """
    if (
        tp_group is not None
        and tp_reduce is None
        and torch.is_grad_enabled()
        and (hidden.requires_grad or weight.requires_grad)
    ):
        raise ValueError("per_example_loss: differentiating under tp_group on the torch path needs tp_reduce "
                         "(the tensor-parallel layer's reduce_from_region)")  # fmt: skip
    row_w, n_valid = prepare_loss_inputs(hidden, weight, labels, loss_mask, vocab_size, vocab_start, tp_group)
    B, T, d = hidden.shape
    dt = row_w.dtype
    h2 = hidden.reshape(B * T, d)
    lab2 = labels.reshape(-1)
    W = weight[:n_valid].to(dt)
    active = torch.nonzero(row_w).squeeze(1)
    step = max(1, chunk_bytes // (weight.shape[0] * torch.finfo(dt).bits // 8))  # equal on all tp ranks
    ces, lses = [], []
    for s in range(0, active.numel(), step):
        idx = active[s : s + step]
        logits = h2[idx].to(dt) @ W.T
        lab = lab2[idx] - vocab_start
        if tp_group is None:  # every label is in this (only) shard; cross_entropy's fused kernels are fastest
            ce = F.cross_entropy(logits, lab, reduction="none")
            ces.append(ce)
            if return_lse:
                lses.append(ce.detach() + logits.detach().gather(1, lab.unsqueeze(1)).squeeze(1))
            continue
        lse, tgt = row_lse_reference(logits, lab2[idx], vocab_start, tp_group, tp_reduce)
        ces.append(lse - tgt)
        lses.append(lse.detach())
    ce = torch.cat(ces) if ces else h2.new_zeros(0, dtype=dt)
    example = torch.div(active, T, rounding_mode="floor")
    loss = torch.zeros(B, dtype=dt, device=hidden.device).index_add(0, example, row_w[active] * ce)
    if not return_lse:
        return loss
    lse_full = torch.zeros(B * T, dtype=dt, device=hidden.device)
    if lses:
        lse_full[active] = torch.cat(lses)
    return loss, lse_full.view(B, T)
