"""Online data selection: each step keeps the candidates that help a target most, from one backward.

Definitions, sources and costs: ``docs/online_selection.md``. In short, for step ``t`` with
weights ``theta_t``, a candidate batch of ``N = c B`` packed samples and a target batch:

- ``l_i`` is candidate ``i``'s mean token cross-entropy (the training loss of one sample),
  ``L_tgt`` the mean over the target batch of the same per-example loss;
- ``s_i = <grad l_i, grad L_tgt>`` is its first-order benefit: the target loss falls by about
  ``eta s_i`` when one SGD step of size ``eta`` is taken on ``l_i``;
- ``dot`` keeps the ``B`` largest ``s_i``; ``greedy`` adds, one at a time, the candidate with
  the largest ``s_i - r (1/2 |g_i|^2 + sum_{j picked} <g_i, g_j>)`` (``r = lr_t / B``: the
  second-order Taylor term of the target loss after the SGD step ``-(lr_t/B) sum_picked g_j``
  with the Hessian replaced by the identity); ``boltzmann`` samples ``B`` without replacement
  with probabilities proportional to ``exp(s_i / (tau std(s)))`` (Gumbel top-k, seeded by the
  run's seed and the step);
- the update is the mean loss of the kept samples' usual optimizer step.

**One backward pass.** :class:`CandidatePass` runs one forward of every candidate with the
weights frozen and one backward of ``sum_i l_i`` (activation gradients only), holding each
layer's input ``A`` and output gradient ``D`` (:mod:`~lqs_megatron.training.capture`'s hooks,
shared with ``lqs annotate``). Per-example gradients are never formed for the scores: the
layer kernels of ``lqs_megatron/kernels/`` give ``<g_i, grad L_tgt>`` from ``A`` and ``D``;
``greedy``'s pairwise ``<g_i, g_j>`` come from the same ``A`` and ``D`` (direct or ghost,
:func:`linear_gram`). No example is coupled to another (causal attention within a sample, no
batch statistics), so the gradient of the kept samples' loss is ``sum_i w_i A_i^T D_i`` with
``w_i = 1/B`` for the kept and 0 otherwise: :meth:`CandidatePass.assemble` writes it into
``p.grad`` from the stored ``A`` and ``D`` instead of a second backward. The LM head's ``dlogits``
(``B x T x V``) are never stored: its gradient (and its Gram part) is rebuilt from the stored
final hidden states and the row logsumexps chunk by chunk of the vocabulary (the logits GEMM
and the gradient GEMM of the head for the kept samples only).

Tensor parallelism: every shard adds its part of the dot products and Gram entries
(replicated parameters, the norms and a row-parallel bias, on tp rank 0 only) and one
all-reduce over the tp group finishes them; the gradients are this shard's, as in a plain
backward. Data parallelism: each dp rank holds ``N / dp`` candidates; ``dot`` and ``boltzmann``
select over all ``N`` (an all-reduce of the scores), ``greedy`` keeps ``B / dp`` per rank with
the interactions among that rank's candidates (cross-rank pairs would need other ranks'
activations); the kept gradients are summed over dp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lqs_megatron.data.datasets.batching import pad_examples
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.kernels.embedding_stats import grad_stats_embedding
from lqs_megatron.kernels.linear_stats import grad_stats_linear
from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats
from lqs_megatron.kernels.norm_stats import grad_stats_norm
from lqs_megatron.models.decoder import RMSNorm
from lqs_megatron.parallel.dims import ParallelDims, rank_slice
from lqs_megatron.parallel.mappings import copy_to_region
from lqs_megatron.training.capture import as_computed, bias_stats, capture_hook, frozen, lm_head
from lqs_megatron.training.config import ONLINE_METHODS
from lqs_megatron.training.optim import WarmupCosine
from lqs_megatron.training.step import StepResult, TrainStep

METHODS = ONLINE_METHODS
_CHUNK = 1 << 22  # elements of one temporary of the Gram and head loops


# ----------------------------------------------------------------------------- selection rules


def select_kept(
    method: str,
    scores: np.ndarray,
    keep: int,
    gram: np.ndarray | None = None,
    rate: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Positions (ascending) of the ``keep`` candidates ``method`` keeps, from float64 ``scores``.

    ``dot``: the largest scores, ties to the lower position. ``greedy``: ``keep`` rounds; each adds
    the unpicked candidate with the largest ``scores[i] - rate (gram[i, i] / 2 + sum_{j picked}
    gram[i, j])`` (ties to the lower position). ``boltzmann``: the ``keep`` largest
    ``scores / (temperature std(scores)) + Gumbel noise`` of a generator seeded with ``seed``.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if not 0 < keep <= n:
        raise LQSError(f"cannot keep {keep} of {n} candidates")
    if method == "dot":
        order = np.argsort(-s, kind="stable")
        return np.sort(order[:keep])
    if method == "greedy":
        if gram is None:
            raise LQSError("greedy selection needs the candidates' Gram matrix")
        g = np.asarray(gram, dtype=np.float64)
        gain = s - rate * 0.5 * np.diag(g)
        free = np.ones(n, dtype=bool)
        picked = []
        for _ in range(keep):
            i = int(np.argmax(np.where(free, gain, -np.inf)))  # first of the ties
            picked.append(i)
            free[i] = False
            gain = gain - rate * g[:, i]
        return np.sort(np.asarray(picked, dtype=np.int64))
    if method == "boltzmann":
        spread = float(s.std())
        scale = temperature * (spread if spread > 0 else 1.0)
        rng = np.random.default_rng(seed)
        keys = s / scale + rng.gumbel(size=n)
        return np.sort(np.argsort(-keys, kind="stable")[:keep])
    raise LQSError(f"unknown selection method {method!r} (expected one of {', '.join(METHODS)})")


def selection_seed(seed: int, step: int) -> int:
    """The Gumbel seed of ``boltzmann`` at ``step``: a pure function of the run's seed and the step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


# ----------------------------------------------------------------------------- Gram pieces


def linear_gram(A: torch.Tensor, D: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """``[N, N]`` ``<G_i, G_j>`` of a linear layer's per-example weight gradients ``G_i = D_i^T A_i``.

    ``direct``: ``G_i`` formed a chunk of output columns at a time (``N T d_in d_out`` + ``N^2 d_in d_out``
    FLOPs); ``ghost``: ``sum_{t,s} (A_i A_j^T)_{ts} (D_i D_j^T)_{ts}`` (``N^2 T^2 (d_in + d_out)``), never
    forming ``G_i``. ``auto`` takes the cheaper."""
    N, T, din = A.shape
    dout = D.shape[-1]
    dt = torch.float64 if A.dtype == torch.float64 else torch.float32
    A, D = A.to(dt), D.to(dt)
    if method == "auto":
        method = "ghost" if N * T * T * (din + dout) < T * din * dout + N * din * dout else "direct"
    gram = torch.zeros(N, N, dtype=dt, device=A.device)
    if method == "direct":
        step = max(1, _CHUNK // max(N * din, 1))
        for o in range(0, dout, step):
            g = torch.einsum("nti,nto->nio", A, D[..., o : o + step]).reshape(N, -1)
            gram += g @ g.T
        return gram
    if method != "ghost":
        raise ValueError(f"method must be auto, direct or ghost, got {method!r}")
    step = max(1, _CHUNK // max(N * T * T, 1))
    for i in range(0, N, step):
        aa = torch.einsum("itk,jsk->ijts", A[i : i + step], A)
        dd = torch.einsum("itk,jsk->ijts", D[i : i + step], D)
        gram[i : i + step] = (aa * dd).sum((2, 3))
    return gram


def embedding_gram(
    ids: torch.Tensor, D: torch.Tensor, vocab_start: int, rows: int, method: str = "auto"
) -> torch.Tensor:
    """``[N, N]`` ``<G_i, G_j>`` of an embedding shard (rows ``[vocab_start, vocab_start + rows)``),
    ``G_i[v] = sum_{t: ids_i[t] = v} D_i[t]`` (repeated ids exact). ``direct``: ``G_i`` scattered a chunk of
    vocabulary rows at a time (``N^2 V d`` FLOPs); ``ghost``: ``sum_{t,s} [ids_i[t] = ids_j[s]] D_i[t] . D_j[s]``
    (``N^2 T^2 d``); ``auto`` takes the cheaper."""
    dt = torch.float64 if D.dtype == torch.float64 else torch.float32
    D = D.to(dt)
    N, T, d = D.shape
    local = ids - vocab_start
    inside = (local >= 0) & (local < rows)
    gram = torch.zeros(N, N, dtype=dt, device=D.device)
    if method == "auto":
        method = "ghost" if T * T < rows else "direct"
    if method == "direct":
        step = max(1, _CHUNK // max(N * d, 1))
        example = torch.arange(N, device=D.device)[:, None].expand(N, T)
        for v0 in range(0, rows, step):
            v1 = min(v0 + step, rows)
            sel = inside & (local >= v0) & (local < v1)
            g = torch.zeros(N, v1 - v0, d, dtype=dt, device=D.device)
            g.index_put_((example[sel], local[sel] - v0), D[sel], accumulate=True)
            g = g.reshape(N, -1)
            gram += g @ g.T
        return gram
    if method != "ghost":
        raise ValueError(f"method must be auto, direct or ghost, got {method!r}")
    key = torch.where(inside, local, torch.full_like(local, -1))
    for i in range(N):
        same = (key[i][:, None, None] == key[None]) & inside[i][:, None, None]  # [T, N, T]
        gram[i] = (same.to(dt) * torch.einsum("td,nsd->tns", D[i], D)).sum((0, 2))
    return gram


def _head_dlogits(h, W, labels, w_rows, lse, v0, v1, vocab_start):
    """``dz[n, t, v] = w_nt (softmax_ntv - onehot(y_nt)_v)`` for the vocabulary rows ``[v0, v1)`` of the shard."""
    z = torch.einsum("ntd,vd->ntv", h, W[v0:v1]) - lse.unsqueeze(-1)
    p = torch.exp(z.masked_fill(w_rows.unsqueeze(-1) == 0, float("-inf"))) * w_rows.unsqueeze(-1)
    local = labels - vocab_start - v0
    hit = (local >= 0) & (local < v1 - v0)
    idx = torch.nonzero(hit, as_tuple=True)
    p[idx[0], idx[1], local[hit]] -= w_rows[hit]
    return p


def head_pieces(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lse: torch.Tensor,
    n_valid: int,
    vocab_start: int,
    example_weights: torch.Tensor | None = None,
    want_gram: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The LM head's ``(sum_i w_i G_i [V_local, d], gram [N, N])`` (each when asked) from the final hidden
    states and the rows' global logsumexp, ``G_i = sum_t dz_it^T h_it``, chunk by chunk of the vocabulary
    (rows past ``n_valid`` are padding: zero gradient)."""
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    h, W, lse = hidden.to(dt), weight.to(dt), lse.to(dt)
    m = loss_mask.to(dt)
    w_rows = m / m.sum(1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    N, T, d = h.shape
    grad = torch.zeros(weight.shape, dtype=dt, device=h.device) if example_weights is not None else None
    gram = torch.zeros(N, N, dtype=dt, device=h.device) if want_gram else None
    if example_weights is not None:
        ew = example_weights.to(dt)
        rows = torch.nonzero(ew).squeeze(1)
        hk, wk = h[rows], w_rows[rows] * ew[rows].unsqueeze(1)
        step = max(1, _CHUNK // max(len(rows) * T + d, 1))
        for v0 in range(0, n_valid, step):
            v1 = min(v0 + step, n_valid)
            dz = _head_dlogits(hk, W, labels[rows], wk, lse[rows], v0, v1, vocab_start)
            grad[v0:v1] = torch.einsum("ntv,ntd->vd", dz, hk)
    if want_gram:
        step = max(1, _CHUNK // max(N * (T + d), 1))
        for v0 in range(0, n_valid, step):
            v1 = min(v0 + step, n_valid)
            dz = _head_dlogits(h, W, labels, w_rows, lse, v0, v1, vocab_start)
            g = torch.einsum("ntv,ntd->nvd", dz, h).reshape(N, -1)
            gram += g @ g.T
    return grad, gram


# ----------------------------------------------------------------------------- the candidate pass


@dataclass
class _Layer:
    """One module's rule and what the pass held of it: inputs ``A`` (ids, ``xhat``) and output gradients ``D``."""

    name: str
    module: nn.Module
    kind: str  # linear | embedding | norm
    counted: bool  # its statistics are added on this tp rank
    bias_counted: bool = False
    held: list = field(default_factory=list)  # (A, D) per micro-batch


@dataclass
class PassOutput:
    """What the candidate pass found, over this rank's candidates (statistics already summed over tp)."""

    losses: torch.Tensor  # [N] float64
    scores: torch.Tensor  # [N] float64 <g_i, grad L_tgt>
    gram: torch.Tensor | None  # [N, N] float64 <g_i, g_j> (greedy)


class CandidatePass:
    """One forward and one activation-gradient backward of a rank's candidates; scores, Gram and the kept
    samples' gradient from the held layer inputs and output gradients (module docstring)."""

    def __init__(self, model: nn.Module, dims: ParallelDims, backend: str = "auto", gram_method: str = "auto"):
        self.model, self.dims, self.backend, self.gram_method = model, dims, backend, gram_method
        if model.output.weight is model.tok_embeddings.weight:
            raise LQSError(
                "online selection does not support tied input/output embeddings (tie_word_embeddings): "
                "the shared weight's per-example gradient couples the embedding and the head "
                "(docs/online_selection.md)"
            )
        main = dims.tp_rank == 0
        self.layers: list[_Layer] = []
        covered = {"output.weight"}
        for name, mod in model.named_modules():
            if mod is model.output:
                continue
            if isinstance(mod, nn.Embedding):
                self.layers.append(_Layer(name, mod, "embedding", True))
            elif isinstance(mod, RMSNorm):
                self.layers.append(_Layer(name, mod, "norm", main))
            elif isinstance(mod, nn.Linear):
                sharded_bias = mod.bias is not None and getattr(mod.bias, "tp_dim", None) is not None
                self.layers.append(_Layer(name, mod, "linear", True, mod.bias is not None and (sharded_bias or main)))
                if mod.bias is not None:
                    covered.add(f"{name}.bias")
            else:
                continue
            covered.add(f"{name}.weight")
        missing = [n for n, p in model.named_parameters() if n not in covered]
        if missing:
            raise LQSError(f"online selection: no per-example rule for parameter(s) {', '.join(missing)}")
        self.head: list = []  # (hidden, labels, mask, lse) per micro-batch
        self._inputs: dict[int, tuple] = {}
        self._mask = None

    def _hook(self, layer: _Layer, target: dict | None, add):
        mod, backend = layer.module, self.backend
        lam_w = target.get(f"{layer.name}.weight") if target is not None else None
        lam_b = target.get(f"{layer.name}.bias") if target is not None and layer.bias_counted else None

        def stats(kept, grad):
            layer.held.append((kept, grad.detach()))
            if lam_w is None:
                return
            if layer.kind == "embedding":
                start = int(getattr(mod, "vocab_start", 0))
                yield grad_stats_embedding(kept, grad, lam_w, start, self._mask, backend=backend)
            elif layer.kind == "norm":
                if layer.counted:
                    yield grad_stats_norm(kept, grad, lam_w, self._mask, backend=backend)
            else:
                yield grad_stats_linear(kept, grad, lam_w, self._mask, backend=backend)
                if lam_b is not None:
                    yield bias_stats(grad, lam_b)

        if layer.kind == "embedding":
            keep = lambda m, x: x  # noqa: E731
        elif layer.kind == "norm":
            keep = lambda m, x: m.normalize(x.detach())  # noqa: E731
        else:
            keep = self._shared_input
        return capture_hook(keep, stats, add, layer.kind == "embedding")

    def _shared_input(self, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A linear layer's input as multiplied; layers fed the same tensor (q/k/v, gate/up) hold one copy
        (under bf16 autocast the cast is a new tensor per layer otherwise)."""
        key = id(x)
        hit = self._inputs.get(key)
        if hit is None or hit[0] is not x:
            hit = self._inputs[key] = (x, as_computed(x.detach()))
        return hit[1]

    def run(self, micro_batches: Sequence[tuple], target: dict, want_gram: bool, autocast) -> PassOutput:
        """Scores (and, with ``want_gram``, the Gram matrix) of the candidates in ``micro_batches``
        (``(input_ids, labels, loss_mask)`` each); ``target``: the target gradient by parameter name."""
        self.release()
        model = self.model
        losses, dots = [], []
        for ids, labels, mask in micro_batches:
            acc = torch.zeros(len(ids), dtype=torch.float64, device=ids.device)

            def add(dot, sq, acc=acc):
                acc.add_(dot.double())

            self._mask = mask
            self._inputs: dict[int, tuple] = {}  # this forward's linear inputs, by tensor identity
            handles = [layer.module.register_forward_hook(self._hook(layer, target, add)) for layer in self.layers]
            try:
                with frozen(model), torch.enable_grad(), autocast():
                    hidden = model(ids)
                    weight, vocab_start, group = lm_head(model)
                    hidden, weight = as_computed(hidden), as_computed(weight)
                    lam = target["output.weight"].to(weight.dtype if weight.dtype == torch.float64 else torch.float32)
                    loss, dot, _sq, lse = lm_head_loss_and_stats(
                        copy_to_region(hidden, group),
                        weight,
                        labels,
                        mask,
                        lam,
                        model.config.vocab_size,
                        vocab_start,
                        group,
                        backend=self.backend,
                    )
                    acc.add_(dot.double())
                    self.head.append((hidden.detach(), labels, mask, lse))
                    loss.sum().backward()
            finally:
                for h in handles:
                    h.remove()
                self._inputs = {}
            losses.append(loss.detach().double())
            dots.append(acc)
        N = sum(len(mb[0]) for mb in micro_batches)
        packed = torch.zeros(N, 1 + (N if want_gram else 0), dtype=torch.float64, device=losses[0].device)
        packed[:, 0] = torch.cat(dots)
        if want_gram:
            packed[:, 1:] = self.gram()
        self.dims.all_reduce(packed, group="tp")
        return PassOutput(torch.cat(losses), packed[:, 0].clone(), packed[:, 1:].clone() if want_gram else None)

    def _cat(self, layer: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([a for a, _ in layer.held]), torch.cat([d for _, d in layer.held])

    def _head(self):
        h, labels, mask, lse = (torch.cat([x[k] for x in self.head]) for k in range(4))
        weight, start, _ = lm_head(self.model)
        n_valid = min(max(self.model.config.vocab_size - start, 0), weight.shape[0])
        return h, weight.detach(), labels, mask, lse, n_valid, start

    def gram(self) -> torch.Tensor:
        """This tp shard's part of ``[N, N]`` ``<g_i, g_j>`` over the whole model (float64)."""
        h, weight, labels, mask, lse, n_valid, start = self._head()
        _, gram = head_pieces(h, weight, labels, mask, lse, n_valid, start, want_gram=True)
        gram = gram.double()
        for layer in self.layers:
            if not layer.counted and not layer.bias_counted:
                continue
            A, D = self._cat(layer)
            if layer.kind == "embedding":
                mod = layer.module
                gram += embedding_gram(A, D, int(getattr(mod, "vocab_start", 0)), mod.weight.shape[0]).double()
            elif layer.kind == "norm":
                g = (A.double() * D.double()).sum(1)
                gram += g @ g.T
            else:
                if layer.counted:
                    gram += linear_gram(A, D, self.gram_method).double()
                if layer.bias_counted:
                    g = D.double().sum(1)
                    gram += g @ g.T
        return gram

    def assemble(self, weights: torch.Tensor) -> None:
        """``p.grad = sum_i weights[i] g_i`` for every parameter, from the held inputs and output gradients."""
        rows = torch.nonzero(weights).squeeze(1)
        for layer in self.layers:
            A, D = self._cat(layer)
            A, D = A[rows], D[rows]
            mod = layer.module
            w = weights[rows].to(torch.float64 if D.dtype == torch.float64 else torch.float32)
            dt = w.dtype
            Dw = D.to(dt) * w[:, None, None]
            if layer.kind == "embedding":
                start, V = int(getattr(mod, "vocab_start", 0)), mod.weight.shape[0]
                local = A - start
                inside = (local >= 0) & (local < V)
                g = torch.zeros(mod.weight.shape, dtype=dt, device=D.device)
                g.index_add_(0, local[inside], Dw[inside])
                mod.weight.grad = g.to(mod.weight.dtype)
            elif layer.kind == "norm":
                mod.weight.grad = (A.to(dt) * Dw).sum((0, 1)).to(mod.weight.dtype)
            else:
                mod.weight.grad = (Dw.flatten(0, 1).T @ A.to(dt).flatten(0, 1)).to(mod.weight.dtype)
                if mod.bias is not None:
                    mod.bias.grad = Dw.sum((0, 1)).to(mod.bias.dtype)
        h, weight, labels, mask, lse, n_valid, start = self._head()
        grad, _ = head_pieces(h, weight, labels, mask, lse, n_valid, start, example_weights=weights)
        out = self.model.output.weight
        out.grad = grad.to(out.dtype)

    def release(self) -> None:
        """Drop what the last pass held."""
        for layer in self.layers:
            layer.held = []
        self.head = []


# ----------------------------------------------------------------------------- the target


class TargetBatches:
    """``target(step) -> (this rank's micro-batches, examples over all ranks)``: target batch
    ``k = step // refresh`` is sequences ``[k b, (k + 1) b)`` of ``prefix`` modulo its size (stored order,
    cycling), each cut to ``L + 1`` tokens and right-padded (``data/datasets/batching.py``), split over the
    dp ranks and cut into micro-batches. A pure function of the step: a resumed run reads the same."""

    def __init__(self, prefix: str, max_length: int, batch_size: int, refresh: int, micro: int, dims: ParallelDims):
        self.ds = open_dataset(prefix)  # a dataset or a view
        self.prefix, self.max_length, self.batch_size, self.refresh = prefix, max_length, batch_size, refresh
        self.micro, self.dims = micro, dims
        if len(self.ds) == 0:
            raise LQSError(f"--target {prefix}: the dataset holds no sequences")
        short = np.flatnonzero(np.asarray(self.ds.sequence_lengths) < 2)
        if short.size:
            i = int(short[0])
            raise LQSError(
                f"--target {prefix}: sequence {i} has {int(self.ds.sequence_lengths[i])} token(s); "
                f"an example needs at least 2 (input and label)"
            )

    def indices(self, step: int) -> np.ndarray:
        k = step // self.refresh
        return np.arange(k * self.batch_size, (k + 1) * self.batch_size, dtype=np.int64) % len(self.ds)

    def __call__(self, step: int) -> tuple[list[tuple], int]:
        idx = self.indices(step)
        lo, hi = rank_slice(len(idx), self.dims.dp, self.dims.dp_rank)
        mine = idx[lo:hi]
        out = []
        for s in range(0, len(mine), self.micro):
            part = mine[s : s + self.micro]
            seqs = [self.ds.get(int(i), 0, self.max_length + 1) for i in part]
            batch = pad_examples(seqs, self.max_length, 0, indices=[int(i) for i in part])
            out.append(tuple(t.to(self.dims.device) for t in batch))
        return out, len(idx)


# ----------------------------------------------------------------------------- the step


@dataclass
class OnlineSettings:
    """How a run selects (``lqs pretrain --online-select``; fields of :class:`PretrainConfig`)."""

    method: str
    keep: int
    """Samples kept per step over all dp ranks (the global batch size B)."""
    candidates_per_pick: int
    target_refresh: int
    temperature: float = 1.0
    seed: int = 0


@dataclass
class StepRecord:
    """What one selection step did on this rank, for ``online_selection.jsonl`` and the metrics."""

    kept: np.ndarray  # global candidate positions kept, over all dp ranks
    scores: np.ndarray  # [N_global] float64
    losses: np.ndarray  # [N_global] float64
    seconds: dict
    target_refreshed: bool

    def summary(self) -> dict:
        s, k = self.scores, self.kept
        return {
            "score_mean": float(s.mean()),
            "score_std": float(s.std()),
            "score_min": float(s.min()),
            "score_max": float(s.max()),
            "kept_score_mean": float(s[k].mean()),
            "candidate_loss": float(self.losses.mean()),
        }


class OnlineStep(TrainStep):
    """``step_fn(candidate micro_batches, n_local candidates, step) -> StepResult``: selection, then the usual
    clip, finite check and AdamW step on the kept samples' mean loss (``TrainStep``'s policy)."""

    def __init__(
        self,
        loss_module: nn.Module,
        dims: ParallelDims,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupCosine,
        settings: OnlineSettings,
        target_batches: Callable[[int], list[tuple]],
        clip_grad: float = 1.0,
        amp_dtype: torch.dtype | None = None,
        backend: str = "auto",
        gram_method: str = "auto",
    ):
        # no DDP wrapper: the pass freezes the weights, and the kept gradients are assembled and summed over dp here
        super().__init__(loss_module, dims, optimizer, schedule, clip_grad, amp_dtype, data_parallel=False)
        if settings.method not in METHODS:
            raise LQSError(f"--online-select must be one of {', '.join(METHODS)}, got {settings.method!r}")
        self.settings = settings
        self.model = loss_module.model
        self.target_batches = target_batches
        self.cand = CandidatePass(self.model, dims, backend, gram_method)
        self.target: dict | None = None
        self.target_step: int | None = None
        self.record: StepRecord | None = None
        self.names = {p: n for n, p in self.model.named_parameters()}

    # target gradient ---------------------------------------------------------------

    def target_gradient(self, step: int) -> dict:
        """``grad L_tgt`` at the current weights: the mean loss of target batch ``step // target_refresh``
        (this rank's share of it, the gradients summed over dp), by parameter name."""
        batches, n_total = self.target_batches(step)
        self.optimizer.zero_grad(set_to_none=True)
        for mb in batches:
            with self.autocast():
                losses = self.loss_module(*mb)
            (losses.sum() / n_total).backward()
        grads = {}
        for p, name in self.names.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[name] = g.detach().float() if p.dtype != torch.float64 else g.detach().clone()
        self.optimizer.zero_grad(set_to_none=True)
        self._all_reduce_dp(list(grads.values()))
        return grads

    def target_state(self) -> dict:
        """The cached target gradient and the step it was computed at (saved with a checkpoint)."""
        return {"step": self.target_step, "grad": self.target}

    def load_target_state(self, state: dict) -> None:
        self.target_step, self.target = state["step"], state["grad"]

    def _all_reduce_dp(self, tensors: list[torch.Tensor]) -> None:
        if self.dims.dp == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.dims.all_reduce(flat, group="dp")
        o = 0
        for t in tensors:
            t.copy_(flat[o : o + t.numel()].view_as(t))
            o += t.numel()

    # the step ----------------------------------------------------------------------------

    def __call__(self, micro_batches: Sequence[tuple], n_local: int, step: int) -> StepResult:
        s, dims = self.settings, self.dims
        t0 = time.perf_counter()
        lr = self.begin(step)
        refreshed = self.target is None or step % s.target_refresh == 0 or self.target_step is None
        if refreshed:
            self.target, self.target_step = self.target_gradient(step), step
        t_target = time.perf_counter()
        out = self.cand.run(micro_batches, self.target, s.method == "greedy", self.autocast)
        t1 = time.perf_counter()
        kept, scores, losses = self._choose(out, n_local, step, lr)
        t2 = time.perf_counter()
        lo = dims.dp_rank * n_local
        weights = torch.zeros(n_local, dtype=torch.float64, device=out.scores.device)
        mine = kept[(kept >= lo) & (kept < lo + n_local)] - lo
        weights[torch.as_tensor(mine, device=weights.device)] = 1.0 / s.keep
        self.cand.assemble(weights)
        self.cand.release()
        self._all_reduce_dp([p.grad for p in self.params])
        loss = float(losses[kept].mean())
        norm, finite = self.update(loss, finite=bool(np.isfinite(scores).all()))
        t3 = time.perf_counter()
        seconds = {"target_s": t_target - t0, "candidate_s": t1 - t_target, "select_s": t2 - t1, "update_s": t3 - t2}
        self.record = StepRecord(kept, scores, losses, seconds, refreshed)
        return StepResult(loss, norm, lr, finite)

    def _choose(self, out: PassOutput, n_local: int, step: int, lr: float):
        """``(kept global positions, all scores, all losses)``, the same on every rank."""
        s, dims = self.settings, self.dims
        n_all = n_local * dims.dp
        lo = dims.dp_rank * n_local
        both = torch.zeros(2, n_all, dtype=torch.float64, device=out.scores.device)
        both[0, lo : lo + n_local] = out.scores
        both[1, lo : lo + n_local] = out.losses
        dims.all_reduce(both, group="dp")
        scores, losses = both[0].cpu().numpy(), both[1].cpu().numpy()
        if s.method == "greedy":  # per dp rank, among its own candidates
            local = select_kept(
                "greedy", scores[lo : lo + n_local], s.keep // dims.dp, out.gram.cpu().numpy(), lr / s.keep
            )
            mask = torch.zeros(n_all, dtype=torch.float64, device=out.scores.device)
            mask[torch.as_tensor(local + lo, device=mask.device)] = 1.0
            dims.all_reduce(mask, group="dp")
            kept = np.flatnonzero(mask.cpu().numpy() > 0.5)
        else:
            kept = select_kept(s.method, scores, s.keep, temperature=s.temperature, seed=selection_seed(s.seed, step))
        return kept, scores, losses


# ----------------------------------------------------------------------------- records


SELECTION_FILE = "online_selection.jsonl"
SOURCES_FILE = "online_selection_sources.json"


class SelectionLog:
    """``OUT/online_selection.jsonl`` (global rank 0): one line per optimizer step, ``{"step": t,
    "candidates": [...], "kept": [...], "kept_documents": [[d, i], ...], score summary}``; the indices
    are sample numbers of the run's stream (``--data`` packed, ``training/data.py``) and
    ``kept_documents`` the ``(--data number, sequence index)`` where each kept sample starts. A resumed
    run drops the lines after its checkpoint's step first (the part a killed run lost)."""

    def __init__(self, out, start_step: int, active: bool):
        from pathlib import Path

        self.path = Path(out) / SELECTION_FILE
        self.fh = None
        if not active:
            return
        kept = []
        if start_step > 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= start_step:
                    kept.append(line)
        from lqs_megatron.utils.atomic import atomic_file

        with atomic_file(self.path) as tmp:  # a kill while trimming keeps the old log whole
            tmp.write_text("".join(f"{ln}\n" for ln in kept))
        self.fh = open(self.path, "a")  # noqa: SIM115 (held for the run)

    def write(self, rec: dict) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def source_report(out, prefixes: list[str], first_document: Callable[[int], tuple[int, int]]) -> dict | None:
    """Per ``source`` (the ``PREFIX.meta.jsonl`` field, as ``lqs report --by source``): candidates and kept
    samples over the whole run, from ``online_selection.jsonl``, each sample counted for the document
    where it starts (``first_document(g) -> (--data number, sequence)``); None when no ``--data`` has
    that field."""
    from pathlib import Path

    from lqs_megatron.data.datasets.meta import group_labels

    labels = []
    for p in prefixes:
        try:  # a view's records are its source's; no sidecar or no source field: no report for it
            lab = group_labels(p, len(open_dataset(p)), "source")
        except LQSError:
            lab = None
        labels.append(lab)
    if all(lab is None for lab in labels):
        return None
    table: dict[str, dict] = {}
    for line in (Path(out) / SELECTION_FILE).read_text().splitlines():
        rec = json.loads(line)
        for field_ in ("candidates", "kept"):
            for g in rec[field_]:
                d, i = first_document(g)
                src = labels[d][i] if labels[d] is not None else "(none)"
                row = table.setdefault(src, {"candidates": 0, "kept": 0})
                row[field_] += 1
    total_kept = sum(r["kept"] for r in table.values()) or 1
    for r in table.values():
        r["kept_rate"] = r["kept"] / r["candidates"] if r["candidates"] else 0.0
        r["share_of_kept"] = r["kept"] / total_kept
    return {"by": "source", "sources": dict(sorted(table.items()))}
