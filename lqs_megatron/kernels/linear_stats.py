"""Per-example gradient statistics of a linear layer, without per-example gradients.

For ``y = x W^T`` (``W`` is ``[d_out, d_in]``) the gradient of example ``n``'s own loss is
``G_n = D_n^T A_n`` where ``A_n`` (``T x d_in``) are the layer's input activations and
``D_n`` (``T x d_out``) the gradients of that loss wrt the layer's outputs. The LQS engine
needs, per example, ``<G_n, Lambda>`` and ``|G_n|_F^2`` for a given ``Lambda`` (the
costate's block for ``W``). Two ways, both here:

- **direct**: form ``G_n`` tile by tile. The Triton kernel keeps each ``[BLOCK_O, BLOCK_I]``
  tile of ``G_n`` in registers (loop over positions), multiplies it with the matching tile of
  ``Lambda`` and squares it, and writes two partial scalars per (example, tile): both
  statistics for the FLOPs of the weight-gradient GEMM the engine skips
  (``2 T d_in d_out`` per example), never a ``B x d_out x d_in`` tensor.
- **ghost**: ``<G_n, Lambda> = sum(D_n * (A_n Lambda^T))`` and
  ``|G_n|^2 = sum((A_n A_n^T) * (D_n D_n^T))``: one ``A Lambda^T`` GEMM fused with the
  product with ``D`` and the reduction, plus ``T^2 (d_in + d_out)`` for the two Gram blocks.

:func:`choose_method` picks one per layer. Positions with ``mask == 0`` are excluded (their
rows of ``D`` count as zero; rows of ``A`` there may hold anything). Results are float32
(float64 for float64 inputs in the reference), accumulated in float32 for bf16 inputs.
Partial sums go to a ``[B, tiles]`` buffer summed by torch, so results are deterministic.
The statistics are not differentiated: there is no autograd wrapper.
"""

from __future__ import annotations

import torch

from lqs_megatron.kernels._dispatch import acc_dtype, interpreting, tl_dot_precision, upcast_in_kernel, use_triton
from lqs_megatron.kernels._launch import Launch, block, num_sms
from lqs_megatron.kernels._triton import tl, triton

METHODS = ("auto", "direct", "ghost")

# Working-set bound of the torch reference's per-chunk temporaries (bytes). Under glibc's largest mmap
# threshold (32 MiB), so repeated chunks reuse heap memory instead of page-faulting fresh mappings.
REFERENCE_CHUNK_BYTES = 16 << 20
REFERENCE_TILE_BYTES = 4 << 20
"""The direct reference computes an example's ``G_n`` larger than this in blocks of output rows of
about this size, each reduced while it is still in cache (as the Triton kernel does with its
on-chip tiles)."""
GHOST_WORK_RATIO = 60
"""The torch reference takes ghost when ``T^2 (d_in + d_out) < GHOST_WORK_RATIO * d_in * d_out``
(:func:`choose_method`). Measured on single layers: ghost faster at work ratio 27-32 and 64,
direct at 128-512; model-level, 60 and 80 (which differ for the 8M LM head, ratio 66) were
within the run-to-run spread (docs/benchmarks.md, Kernels)."""


def choose_method(seq_len: int, d_in: int, d_out: int, fused: bool = False) -> str:
    """The cheaper way to get both statistics for one linear layer: ``"direct"`` or ``"ghost"``
    (``docs/algorithm.md``: ``|g_W|^2`` by either formula, "whichever is cheaper").

    Both ways pay one GEMM of ``T d_in d_out`` per example (direct: ``G_n = D^T A``, reduced tile by
    tile while in cache; ghost: the dot's ``A Lambda^T``); ghost adds two Gram blocks
    (``T^2 (d_in + d_out)``).

    - Fused Triton kernels (``fused=True``): always direct: ``G_n`` tiles never leave the chip,
      so direct costs exactly the GEMM and ghost can only add work; the 16-bit tensor cores run
      it while the ghost dot needs float32 ``Lambda`` in the GEMM.
    - Torch reference (``fused=False``): ghost only when its Gram work is small next to the
      GEMM's output, ``T^2 (d_in + d_out) < GHOST_WORK_RATIO * d_in * d_out``; direct otherwise.
      Tuned on the CPU (one thread; docs/benchmarks.md, Kernels and Annotation) on the
      model-level ``annotate.py``: at 8M (T = 128) it takes direct for every layer and the
      statistics cost a median 1.12x of a forward+backward, against 1.22-1.27x with the
      contract's memory rule ``T^2 < d_in d_out`` (ghost for every 256-1024-wide layer); at 64M
      it keeps ghost for the MLP and the LM head, as that rule does.
    """
    if fused:
        return "direct"
    if seq_len * seq_len * (d_in + d_out) < GHOST_WORK_RATIO * d_in * d_out:
        return "ghost"
    return "direct"


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _linear_direct_kernel(
    A, D, L, M, row_start, row_count, out_dot, out_sq,
    n_examples, d_in, d_out, stride_a, stride_d, stride_l, n_tiles, ex_per_prog,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """Direct statistics: for one tile (o, i) of ``G_n = sum_t D[t, o]^T A[t, i]``, for the examples
    ``n`` of this program: ``out_dot[n, tile] = sum(G_tile * Lambda[o, i])``,
    ``out_sq[n, tile] = sum(G_tile^2)``. Rows of example ``n`` are ``row_start[n] + [0, row_count[n])``;
    rows with ``M == 0`` are skipped. The ``Lambda`` tile is loaded once for all of the program's examples.
    """
    pid_tile = tl.program_id(0)
    pid_ex = tl.program_id(1)
    n_iblocks = tl.cdiv(d_in, BLOCK_I)
    offs_o = (pid_tile // n_iblocks) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = (pid_tile % n_iblocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    mo = offs_o < d_out
    mi = offs_i < d_in
    lam = tl.load(L + offs_o[:, None] * stride_l + offs_i[None, :], mask=mo[:, None] & mi[None, :], other=0.0)
    lam = lam.to(tl.float32)
    for k in range(ex_per_prog):
        n = pid_ex * ex_per_prog + k
        valid = n < n_examples
        start = tl.load(row_start + n, mask=valid, other=0).to(tl.int64)
        count = tl.load(row_count + n, mask=valid, other=0)
        acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        for t0 in range(0, count, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mt = offs_t < count
            rows = start + offs_t
            if HAS_MASK:
                mt = mt & (tl.load(M + rows, mask=mt, other=0.0) != 0)
            d = tl.load(D + rows[:, None] * stride_d + offs_o[None, :], mask=mt[:, None] & mo[None, :], other=0.0)
            a = tl.load(A + rows[:, None] * stride_a + offs_i[None, :], mask=mt[:, None] & mi[None, :], other=0.0)
            if UPCAST:
                d = d.to(tl.float32)
                a = a.to(tl.float32)
            acc += tl.dot(tl.trans(d), a, input_precision=PRECISION)
        tl.store(out_dot + n * n_tiles + pid_tile, tl.sum(acc * lam), mask=valid)
        tl.store(out_sq + n * n_tiles + pid_tile, tl.sum(acc * acc), mask=valid)


@triton.jit
def _linear_ghost_dot_kernel(
    A, D, L, M, row_start, row_count, out,
    d_in, d_out, stride_a, stride_d, stride_l, n_oblocks, n_parts,
    HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """Ghost dot: ``out[n, (t, o)] = sum(D[t, o] * (A[t, :] @ Lambda[o, :]^T))`` for one block of
    positions ``t`` and outputs ``o`` of example ``n``; the ``A Lambda^T`` tile never leaves the chip.
    Runs in IEEE float32: ``Lambda`` is float32 and must not be rounded to 16 bits.
    """
    pid = tl.program_id(0)
    n = tl.program_id(1)
    start = tl.load(row_start + n).to(tl.int64)
    count = tl.load(row_count + n)
    tb = pid // n_oblocks
    if tb * BLOCK_T < count:
        offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_o = (pid % n_oblocks) * BLOCK_O + tl.arange(0, BLOCK_O)
        mt = offs_t < count
        mo = offs_o < d_out
        rows = start + offs_t
        if HAS_MASK:
            mt = mt & (tl.load(M + rows, mask=mt, other=0.0) != 0)
        acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
        for i0 in range(0, d_in, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)
            mi = offs_i < d_in
            a = tl.load(A + rows[:, None] * stride_a + offs_i[None, :], mask=mt[:, None] & mi[None, :], other=0.0)
            lam = tl.load(L + offs_o[:, None] * stride_l + offs_i[None, :], mask=mo[:, None] & mi[None, :], other=0.0)
            acc += tl.dot(a.to(tl.float32), tl.trans(lam.to(tl.float32)), input_precision="ieee")
        d = tl.load(D + rows[:, None] * stride_d + offs_o[None, :], mask=mt[:, None] & mo[None, :], other=0.0)
        tl.store(out + n * n_parts + pid, tl.sum(acc * d.to(tl.float32)))


@triton.jit
def _linear_ghost_norm_kernel(
    A, D, M, row_start, row_count, out,
    d_in, d_out, stride_a, stride_d, n_tblocks,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Ghost norm: for position blocks ``i >= j`` of example ``n``,
    ``out[n, (i, j)] = c * sum((A_i A_j^T) * (D_i D_j^T))`` with ``c = 2`` off the diagonal (the
    Gram blocks are symmetric), so ``sum(out[n]) = |A_n^T D_n|_F^2``.
    """
    pid = tl.program_id(0)
    n = tl.program_id(1)
    bi = pid // n_tblocks
    bj = pid % n_tblocks
    start = tl.load(row_start + n).to(tl.int64)
    count = tl.load(row_count + n)
    if (bj <= bi) & (bi * BLOCK_T < count):
        offs_i = bi * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_j = bj * BLOCK_T + tl.arange(0, BLOCK_T)
        mti = offs_i < count
        mtj = offs_j < count
        rows_i = start + offs_i
        rows_j = start + offs_j
        if HAS_MASK:
            mti = mti & (tl.load(M + rows_i, mask=mti, other=0.0) != 0)
            mtj = mtj & (tl.load(M + rows_j, mask=mtj, other=0.0) != 0)
        ga = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
        for k0 in range(0, d_in, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mk = offs_k < d_in
            ai = tl.load(A + rows_i[:, None] * stride_a + offs_k[None, :], mask=mti[:, None] & mk[None, :], other=0.0)
            aj = tl.load(A + rows_j[:, None] * stride_a + offs_k[None, :], mask=mtj[:, None] & mk[None, :], other=0.0)
            if UPCAST:
                ai = ai.to(tl.float32)
                aj = aj.to(tl.float32)
            ga += tl.dot(ai, tl.trans(aj), input_precision=PRECISION)
        gd = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
        for k0 in range(0, d_out, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mk = offs_k < d_out
            di = tl.load(D + rows_i[:, None] * stride_d + offs_k[None, :], mask=mti[:, None] & mk[None, :], other=0.0)
            dj = tl.load(D + rows_j[:, None] * stride_d + offs_k[None, :], mask=mtj[:, None] & mk[None, :], other=0.0)
            if UPCAST:
                di = di.to(tl.float32)
                dj = dj.to(tl.float32)
            gd += tl.dot(di, tl.trans(dj), input_precision=PRECISION)
        scale = tl.where(bi == bj, 1.0, 2.0)
        tl.store(out + n * n_tblocks * n_tblocks + pid, scale * tl.sum(ga * gd))


# ----------------------------------------------------------------------------- launchers


def linear_direct_launch(
    B: int, d_in: int, d_out: int, dtype: torch.dtype, has_mask: bool, sms: int = 1,
    examples_per_program: int | None = None, interpret: bool | None = None,
) -> tuple[Launch, int]:  # fmt: skip
    """The :func:`_linear_direct_kernel` launch for ``B`` examples of ``dtype`` inputs on a device with
    ``sms`` multiprocessors, and its examples per program. ``interpret``: under the CPU interpreter
    (default: ``TRITON_INTERPRET``) one program takes every example and 16-bit tiles are upcast."""
    interpret = interpreting() if interpret is None else interpret
    bo, bi = block(d_out), block(d_in)
    n_tiles = triton.cdiv(d_out, bo) * triton.cdiv(d_in, bi)
    # Enough programs to fill the GPU (about 4 per SM); each reuses its Lambda tile over its examples.
    groups = 1 if interpret else max(1, min(B, triton.cdiv(4 * sms, n_tiles)))
    ex_per_prog = examples_per_program or triton.cdiv(B, groups)
    f32 = torch.float32
    launch = Launch(
        _linear_direct_kernel, (n_tiles, triton.cdiv(B, ex_per_prog)),
        {"HAS_MASK": has_mask, "UPCAST": upcast_in_kernel(dtype, interpret),
         "PRECISION": tl_dot_precision(dtype), "BLOCK_T": 32, "BLOCK_O": bo, "BLOCK_I": bi},
        {"A": dtype, "D": dtype, "L": f32, "M": f32 if has_mask else dtype, "row_start": torch.int32,
         "row_count": torch.int32, "out_dot": f32, "out_sq": f32},
    )  # fmt: skip
    return launch, ex_per_prog


def linear_direct_forward(
    A2: torch.Tensor,
    D2: torch.Tensor,
    lam: torch.Tensor,
    row_start: torch.Tensor,
    row_count: torch.Tensor,
    mask: torch.Tensor | None = None,
    examples_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the direct kernel on ragged rows: ``A2 [rows, d_in]``, ``D2 [rows, d_out]``, example ``n``'s
    rows at ``row_start[n] + [0, row_count[n])`` (int32). Returns float32 ``(dot [B], sqnorm [B])``.
    ``examples_per_program`` overrides the grid's split of the examples (tests)."""
    d_in, d_out = A2.shape[1], D2.shape[1]
    B = row_start.numel()
    launch, ex_per_prog = linear_direct_launch(B, d_in, d_out, A2.dtype, mask is not None, num_sms(A2.device),
                                               examples_per_program)  # fmt: skip
    n_tiles = launch.grid[0]
    out_dot = torch.zeros(B, n_tiles, device=A2.device, dtype=torch.float32)
    out_sq = torch.zeros_like(out_dot)
    launch(A2, D2, lam, mask if mask is not None else D2, row_start, row_count, out_dot, out_sq,
           B, d_in, d_out, A2.stride(0), D2.stride(0), lam.stride(0), n_tiles, ex_per_prog)  # fmt: skip
    return out_dot.sum(1), out_sq.sum(1)


def linear_ghost_launches(
    B: int, max_count: int, d_in: int, d_out: int, dtype: torch.dtype, has_mask: bool, interpret: bool | None = None
) -> tuple[Launch, Launch]:
    """The :func:`_linear_ghost_dot_kernel` and :func:`_linear_ghost_norm_kernel` launches for ``B``
    examples of at most ``max_count`` rows each (``interpret`` as in :func:`linear_direct_launch`)."""
    interpret = interpreting() if interpret is None else interpret
    bt = block(max_count, 32)
    n_t = triton.cdiv(max_count, bt)
    bo = block(d_out)
    n_o = triton.cdiv(d_out, bo)
    f32, m = torch.float32, torch.float32 if has_mask else dtype
    dot = Launch(
        _linear_ghost_dot_kernel, (n_t * n_o, B),
        {"HAS_MASK": has_mask, "BLOCK_T": bt, "BLOCK_O": bo, "BLOCK_I": block(d_in)},
        {"A": dtype, "D": dtype, "L": f32, "M": m, "row_start": torch.int32, "row_count": torch.int32, "out": f32},
    )  # fmt: skip
    norm = Launch(
        _linear_ghost_norm_kernel, (n_t * n_t, B),
        {"HAS_MASK": has_mask, "UPCAST": upcast_in_kernel(dtype, interpret),
         "PRECISION": tl_dot_precision(dtype), "BLOCK_T": bt, "BLOCK_K": block(max(d_in, d_out))},
        {"A": dtype, "D": dtype, "M": m, "row_start": torch.int32, "row_count": torch.int32, "out": f32},
    )  # fmt: skip
    return dot, norm


def linear_ghost_forward(
    A2: torch.Tensor,
    D2: torch.Tensor,
    lam: torch.Tensor,
    row_start: torch.Tensor,
    row_count: torch.Tensor,
    max_count: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the ghost dot and ghost norm kernels on ragged rows (see :func:`linear_direct_forward`);
    ``max_count`` bounds ``row_count``. Returns float32 ``(dot [B], sqnorm [B])``."""
    d_in, d_out = A2.shape[1], D2.shape[1]
    B = row_start.numel()
    dot_launch, norm_launch = linear_ghost_launches(B, max_count, d_in, d_out, A2.dtype, mask is not None)
    n_to = dot_launch.grid[0]
    n_o = triton.cdiv(d_out, dot_launch.constexprs["BLOCK_O"])
    n_t = n_to // n_o
    m = mask if mask is not None else D2
    dot = torch.zeros(B, n_to, device=A2.device, dtype=torch.float32)
    dot_launch(A2, D2, lam, m, row_start, row_count, dot, d_in, d_out, A2.stride(0), D2.stride(0), lam.stride(0),
               n_o, n_to)  # fmt: skip
    sq = torch.zeros(B, n_t * n_t, device=A2.device, dtype=torch.float32)
    norm_launch(A2, D2, m, row_start, row_count, sq, d_in, d_out, A2.stride(0), D2.stride(0), n_t)
    return dot.sum(1), sq.sum(1)


def ragged_rows(
    mask: torch.Tensor | None, B: int, T: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(row_start, row_count, max_count)`` of a dense ``[B, T]`` layout: example ``n`` starts at row
    ``n T``; its rows end after its last position with a nonzero mask (trailing padding is skipped)."""
    row_start = torch.arange(B, device=device, dtype=torch.int32) * T
    if mask is None:
        return row_start, torch.full((B,), T, device=device, dtype=torch.int32), T
    row_count = active_length(mask)
    return row_start, row_count, max(int(row_count.max()), 1)


def active_length(mask: torch.Tensor) -> torch.Tensor:
    """Per example of a ``[B, T]`` mask, one past its last nonzero position (0 if none), int32."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.int32)
    return ((mask != 0).to(torch.int32) * pos).amax(1).to(torch.int32)


# ----------------------------------------------------------------------------- public API


def _check_linear(A: torch.Tensor, D: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor | None, method: str):
    if A.dim() != 3 or D.dim() != 3 or A.shape[:2] != D.shape[:2]:
        raise ValueError(f"A [B,T,d_in] and D [B,T,d_out] expected, got {tuple(A.shape)} and {tuple(D.shape)}")
    if tuple(lam.shape) != (D.shape[2], A.shape[2]):
        raise ValueError(f"Lambda must be [d_out, d_in] = {(D.shape[2], A.shape[2])}, got {tuple(lam.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(A.shape[:2]):
        raise ValueError(f"mask must be [B, T] = {tuple(A.shape[:2])}, got {tuple(mask.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def grad_stats_linear(
    A: torch.Tensor,
    D: torch.Tensor,
    lam: torch.Tensor,
    mask: torch.Tensor | None = None,
    method: str = "auto",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(<G_n, Lambda>, |G_n|_F^2)`` of a linear layer, ``G_n = D_n^T A_n``.

    Args:
        A: input activations ``[B, T, d_in]``.
        D: gradients of each example's own loss wrt the layer outputs ``[B, T, d_out]``.
        lam: ``Lambda`` ``[d_out, d_in]`` (the weight's layout), normally float32.
        mask: optional ``[B, T]``; positions with ``mask == 0`` are excluded.
        method: ``"auto"`` (:func:`choose_method`), ``"direct"`` or ``"ghost"``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see ``kernels/_dispatch.py``).

    Returns:
        ``(dot [B], sqnorm [B])`` in float32 (float64 for float64 inputs on the torch backend).
    """
    _check_linear(A, D, lam, mask, method)
    if not use_triton(backend, A, D, lam):
        return grad_stats_linear_reference(A, D, lam, mask, method)
    B, T, d_in = A.shape
    row_start, row_count, max_count = ragged_rows(mask, B, T, A.device)
    A2, D2 = A.reshape(B * T, d_in).contiguous(), D.reshape(B * T, -1).contiguous()
    m = None if mask is None else mask.reshape(-1).to(torch.float32).contiguous()
    lam = lam.contiguous()
    if method == "auto":
        method = choose_method(max_count, d_in, D.shape[2], fused=True)
    if method == "direct":
        return linear_direct_forward(A2, D2, lam, row_start, row_count, m)
    return linear_ghost_forward(A2, D2, lam, row_start, row_count, max_count, m)


def _example_chunks(B: int, per_example_bytes: int):
    step = max(1, REFERENCE_CHUNK_BYTES // max(per_example_bytes, 1))
    return [(s, min(B, s + step)) for s in range(0, B, step)]


def grad_stats_linear_reference(
    A: torch.Tensor,
    D: torch.Tensor,
    lam: torch.Tensor,
    mask: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch :func:`grad_stats_linear`, chunked over examples so temporaries stay under
    ``REFERENCE_CHUNK_BYTES`` (direct: ``G_n`` of a chunk; ghost: ``A Lambda^T`` and the Grams)."""
    _check_linear(A, D, lam, mask, method)
    B, T, d_in = A.shape
    d_out = D.shape[2]
    dt = acc_dtype(A, D, lam)
    if mask is not None:  # drop trailing positions that no example uses
        T = max(int(active_length(mask).max()), 1)
        A, D, mask = A[:, :T], D[:, :T], mask[:, :T]
    if method == "auto":
        method = choose_method(T, d_in, d_out)
    lam_ = lam.to(dt)
    dot = torch.empty(B, dtype=dt, device=A.device)
    sq = torch.empty(B, dtype=dt, device=A.device)
    size = torch.finfo(dt).bits // 8
    per_ex = size * (d_in * d_out if method == "direct" else T * (d_out + 2 * T))
    for s, e in _example_chunks(B, per_ex):
        a, d = A[s:e].to(dt), D[s:e].to(dt)
        if mask is not None:
            d = d * (mask[s:e] != 0).unsqueeze(-1).to(dt)
        if method == "direct":  # G_n in blocks of output rows, each reduced while in cache
            blk = (
                d_out
                if size * d_in * d_out <= REFERENCE_TILE_BYTES
                else max(1, REFERENCE_TILE_BYTES // (size * (e - s) * d_in))
            )
            dot[s:e], sq[s:e] = 0, 0
            for j in range(0, d_out, blk):
                g = torch.bmm(d[:, :, j : j + blk].transpose(1, 2), a).flatten(1)  # [c, blk * d_in]
                dot[s:e] += g @ lam_[j : j + blk].flatten()
                sq[s:e] += torch.linalg.vector_norm(g, dim=1).square()  # no temporary of g's size
        else:
            dot[s:e] = ((a @ lam_.T) * d).sum((1, 2))
            sq[s:e] = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(d, d.transpose(1, 2))).sum((1, 2))
    return dot, sq
