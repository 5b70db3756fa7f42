"""Per-example gradient statistics of an embedding table (or its vocabulary shard).

Example ``n``'s gradient wrt row ``v`` is ``G_n[v] = sum_{t: ids[n,t] = v} D[n,t]`` (``D`` the
gradient of that example's loss wrt the looked-up vectors), so ``<G_n, Lambda>`` and ``|G_n|_F^2``
come from segment sums over sorted (example, token id) pairs: repeated ids are summed before
squaring (exact). The sort is torch's; the Triton kernel reduces the segments of one example per
program; :func:`grad_stats_embedding_reference` does the same with ``index_add``. Statistics are not
differentiated (no autograd wrapper).
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._dispatch import acc_dtype, use_triton
from lqs_megatron.kernels._launch import Launch, block
from lqs_megatron.kernels._triton import tl, triton

# ----------------------------------------------------------------------------- Triton kernel


@triton.jit
def _embedding_kernel(
    D, L, perm, seg_start, seg_count, seg_vocab, ex_seg_lo, ex_seg_hi, out_dot, out_sq,
    d, stride_d, stride_l, n_dblocks, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Embedding statistics over sorted (example, token id) segments. Segment ``s`` covers the
    positions ``perm[seg_start[s] + [0, seg_count[s])]``, all of one example and one id ``v``:
    ``S = sum_t D[t]`` is row ``v`` of ``G_n``, so ``dot_n += S . Lambda[v]`` and ``sq_n += |S|^2``
    (repeated ids summed before squaring: exact). One program per (example, block of ``d``).
    """
    n = tl.program_id(0)
    db = tl.program_id(1)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sq = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s in range(tl.load(ex_seg_lo + n), tl.load(ex_seg_hi + n)):
        r0 = tl.load(seg_start + s)
        r1 = r0 + tl.load(seg_count + s)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for r in range(r0, r1, BLOCK_R):
            offs_r = r + tl.arange(0, BLOCK_R)
            mr = offs_r < r1
            rows = tl.load(perm + offs_r, mask=mr, other=0)
            x = tl.load(D + rows[:, None] * stride_d + offs_d[None, :], mask=mr[:, None] & md[None, :], other=0.0)
            acc += tl.sum(x.to(tl.float32), axis=0)
        v = tl.load(seg_vocab + s)
        lam = tl.load(L + v * stride_l + offs_d, mask=md, other=0.0).to(tl.float32)
        dot += acc * lam
        sq += acc * acc
    tl.store(out_dot + n * n_dblocks + db, tl.sum(dot))
    tl.store(out_sq + n * n_dblocks + db, tl.sum(sq))


# ----------------------------------------------------------------------------- launcher


def _embedding_segments(ids: torch.Tensor, V_local: int, vocab_start: int, mask: torch.Tensor | None):
    """Sort positions by (example, local id); drop positions outside the shard or masked out.

    Returns ``perm`` (flat positions in sorted order), per segment ``start``, ``count``, ``example``,
    ``vocab`` (local id), all int64.
    """
    B, T = ids.shape
    local = ids.to(torch.int64) - vocab_start
    keep = (local >= 0) & (local < V_local)
    if mask is not None:
        keep &= mask != 0
    example = torch.arange(B, device=ids.device).unsqueeze(1).expand(B, T)
    sentinel = B * V_local
    key = torch.where(keep, example * V_local + local, torch.full_like(local, sentinel)).reshape(-1)
    sorted_key, perm = torch.sort(key, stable=True)
    uniq, count = torch.unique_consecutive(sorted_key, return_counts=True)
    start = torch.cumsum(count, 0) - count
    real = uniq != sentinel
    uniq, count, start = uniq[real], count[real], start[real]
    return perm, start, count, uniq // V_local, uniq % V_local


def embedding_launch(B: int, d: int, dtype: torch.dtype, lam_dtype: torch.dtype = torch.float32) -> Launch:
    """The :func:`_embedding_kernel` launch: one program per (example, block of ``d``)."""
    bd = block(d, 128)
    i64 = torch.int64
    return Launch(_embedding_kernel, (B, triton.cdiv(d, bd)), {"BLOCK_R": 16, "BLOCK_D": bd},
                  {"D": dtype, "L": lam_dtype, "perm": i64, "seg_start": i64, "seg_count": i64, "seg_vocab": i64,
                   "ex_seg_lo": i64, "ex_seg_hi": i64, "out_dot": torch.float32, "out_sq": torch.float32})  # fmt: skip


def embedding_forward(ids, D, lam, vocab_start: int = 0, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`_embedding_kernel` (segments sorted by torch). Returns float32 ``(dot [B], sq [B])``."""
    B, T, d = D.shape
    perm, start, count, example, vocab = _embedding_segments(ids, lam.shape[0], vocab_start, mask)
    ar = torch.arange(B, device=D.device)
    lo = torch.searchsorted(example, ar)
    hi = torch.searchsorted(example, ar, right=True)
    D2 = D.reshape(B * T, d).contiguous()
    lam = lam.contiguous()
    launch = embedding_launch(B, d, D.dtype, lam.dtype)
    n_d = launch.grid[1]
    out_dot = torch.zeros(B, n_d, device=D.device, dtype=torch.float32)
    out_sq = torch.zeros_like(out_dot)
    launch(D2, lam, perm, start, count, vocab, lo, hi, out_dot, out_sq, d, D2.stride(0), lam.stride(0), n_d)
    return out_dot.sum(1), out_sq.sum(1)


# ----------------------------------------------------------------------------- public API


def _check_embedding(ids, D, lam, mask):
    if ids.dim() != 2 or D.dim() != 3 or tuple(ids.shape) != tuple(D.shape[:2]):
        raise ValueError(f"ids [B,T] and D [B,T,d] expected, got {tuple(ids.shape)} and {tuple(D.shape)}")
    if lam.dim() != 2 or lam.shape[1] != D.shape[2]:
        raise ValueError(f"Lambda must be [V_local, {D.shape[2]}], got {tuple(lam.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"mask must be [B, T] = {tuple(ids.shape)}, got {tuple(mask.shape)}")


def grad_stats_embedding(
    ids: torch.Tensor,
    D: torch.Tensor,
    lam: torch.Tensor,
    vocab_start: int = 0,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(<G_n, Lambda>, |G_n|_F^2)`` of an embedding table (or its vocab shard).

    ``G_n[v] = sum_{t: ids[n,t] = v} D[n,t]`` is the gradient of example ``n``'s loss wrt row ``v``:
    ``dot_n = sum_t D[n,t] . Lambda[ids[n,t]]``, ``sq_n = sum_v |G_n[v]|^2`` with repeated ids
    summed first (exact). ``lam`` is this rank's shard ``[V_local, d]`` starting at global row
    ``vocab_start``; ids outside it contribute 0 (sum the partial results over the tp group).
    Positions with ``mask == 0`` are excluded. Float32 results (float64 for float64 on torch).
    """
    _check_embedding(ids, D, lam, mask)
    if not use_triton(backend, D, lam):
        return grad_stats_embedding_reference(ids, D, lam, vocab_start, mask)
    return embedding_forward(ids, D, lam, vocab_start, mask)


def grad_stats_embedding_reference(ids, D, lam, vocab_start: int = 0, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch :func:`grad_stats_embedding`: segment sums with ``index_add`` (memory ``<= |D|``)."""
    _check_embedding(ids, D, lam, mask)
    B, T, d = D.shape
    dt = acc_dtype(D, lam)
    perm, start, count, example, vocab = _embedding_segments(ids, lam.shape[0], vocab_start, mask)
    seg_of_row = torch.repeat_interleave(torch.arange(start.numel(), device=D.device), count)
    rows = perm[: seg_of_row.numel()]  # kept positions come first in sorted order
    S = torch.zeros(start.numel(), d, dtype=dt, device=D.device)
    S.index_add_(0, seg_of_row, D.reshape(B * T, d)[rows].to(dt))
    dot = torch.zeros(B, dtype=dt, device=D.device).index_add_(0, example, (S * lam[vocab].to(dt)).sum(1))
    sq = torch.zeros(B, dtype=dt, device=D.device).index_add_(0, example, S.square().sum(1))
    return dot, sq
