"""Per-example gradient statistics of a norm's elementwise weight (RMSNorm, LayerNorm's scale).

For ``y = w * xhat`` example ``n``'s gradient wrt ``w`` is ``g_n = sum_t D[n,t] * xhat[n,t]`` (a
``d``-vector, ``D`` the gradient of that example's loss wrt ``y``): ``<g_n, Lambda>`` and
``|g_n|^2``. The Triton kernel reduces one (example, block of ``d``) per program;
:func:`grad_stats_norm_reference` is the plain torch sum. Not differentiated.
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._dispatch import acc_dtype, use_triton
from lqs_megatron.kernels._launch import Launch, block
from lqs_megatron.kernels._triton import tl, triton

# ----------------------------------------------------------------------------- Triton kernel


@triton.jit
def _norm_kernel(X, D, L, M, out_dot, out_sq, T, d, stride_x, stride_d, n_dblocks,
                 HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """Elementwise weight ``y = w * xhat``: ``g_n = sum_t D[n,t] * xhat[n,t]`` (a d-vector) per block of
    ``d``; ``out_dot[n, block] = g . Lambda``, ``out_sq[n, block] = |g|^2``."""
    n = tl.program_id(0)
    db = tl.program_id(1)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < d
    g = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mt = offs_t < T
        rows = (n * T + offs_t).to(tl.int64)
        if HAS_MASK:
            mt = mt & (tl.load(M + rows, mask=mt, other=0.0) != 0)
        m2 = mt[:, None] & md[None, :]
        x = tl.load(X + rows[:, None] * stride_x + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        dd = tl.load(D + rows[:, None] * stride_d + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        g += tl.sum(x * dd, axis=0)
    lam = tl.load(L + offs_d, mask=md, other=0.0).to(tl.float32)
    tl.store(out_dot + n * n_dblocks + db, tl.sum(g * lam))
    tl.store(out_sq + n * n_dblocks + db, tl.sum(g * g))


# ----------------------------------------------------------------------------- launcher


def norm_launch(
    B: int, d: int, x_dtype: torch.dtype, dtype: torch.dtype, lam_dtype: torch.dtype = torch.float32,
    has_mask: bool = True,
) -> Launch:  # fmt: skip
    """The :func:`_norm_kernel` launch: one program per (example, block of ``d``)."""
    bd = block(d, 128)
    f32 = torch.float32
    return Launch(_norm_kernel, (B, triton.cdiv(d, bd)), {"HAS_MASK": has_mask, "BLOCK_T": 32, "BLOCK_D": bd},
                  {"X": x_dtype, "D": dtype, "L": lam_dtype, "M": f32 if has_mask else dtype, "out_dot": f32,
                   "out_sq": f32})  # fmt: skip


def norm_forward(xhat, D, lam, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`_norm_kernel`. Returns float32 ``(dot [B], sq [B])``."""
    B, T, d = D.shape
    X2, D2 = xhat.reshape(B * T, d).contiguous(), D.reshape(B * T, d).contiguous()
    m = None if mask is None else mask.reshape(-1).to(torch.float32).contiguous()
    lam = lam.contiguous()
    launch = norm_launch(B, d, xhat.dtype, D.dtype, lam.dtype, m is not None)
    n_d = launch.grid[1]
    out_dot = torch.zeros(B, n_d, device=D.device, dtype=torch.float32)
    out_sq = torch.zeros_like(out_dot)
    launch(X2, D2, lam, m if m is not None else D2, out_dot, out_sq, T, d, X2.stride(0), D2.stride(0), n_d)
    return out_dot.sum(1), out_sq.sum(1)


# ----------------------------------------------------------------------------- public API


def _check_norm(xhat, D, lam, mask):
    if xhat.dim() != 3 or tuple(xhat.shape) != tuple(D.shape) or tuple(lam.shape) != (D.shape[2],):
        raise ValueError(f"xhat, D [B,T,d] and Lambda [d] expected, got {tuple(xhat.shape)}, {tuple(D.shape)}, "
                         f"{tuple(lam.shape)}")  # fmt: skip
    if mask is not None and tuple(mask.shape) != tuple(D.shape[:2]):
        raise ValueError(f"mask must be [B, T] = {tuple(D.shape[:2])}, got {tuple(mask.shape)}")


def grad_stats_norm(
    xhat: torch.Tensor,
    D: torch.Tensor,
    lam: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(g_n . Lambda, |g_n|^2)`` of a norm's weight ``w`` in ``y = w * xhat`` (RMSNorm,
    LayerNorm's scale): ``g_n = sum_t D[n,t] * xhat[n,t]``. ``xhat [B,T,d]`` is the normalised input
    exactly as it is multiplied by ``w`` (for HF-style RMSNorm: cast back to the input dtype), ``D``
    the gradient wrt ``y``. Positions with ``mask == 0`` are excluded. Float32 results."""
    _check_norm(xhat, D, lam, mask)
    if not use_triton(backend, xhat, D, lam):
        return grad_stats_norm_reference(xhat, D, lam, mask)
    return norm_forward(xhat, D, lam, mask)


def grad_stats_norm_reference(xhat, D, lam, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch :func:`grad_stats_norm`."""
    _check_norm(xhat, D, lam, mask)
    dt = acc_dtype(xhat, D, lam)
    prod = xhat.to(dt) * D.to(dt)
    if mask is not None:
        prod = prod * (mask != 0).unsqueeze(-1).to(dt)
    g = prod.sum(1)
    return g @ lam.to(dt), g.square().sum(1)
