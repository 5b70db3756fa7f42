"""Per-example ``<g_n, lambda>`` and ``|g_n|^2`` over the whole model, from one forward and one
backward of a proxy batch, never forming a per-example gradient.

How (for a batch of ``B`` examples):

1. Forward with hooks. Every parameter has ``requires_grad=False`` for the pass, so the
   backward computes activation gradients only: the batch weight-gradient GEMMs of a
   normal backward are skipped, and their FLOPs pay for the statistics. The embedding
   output is made to require grad so that the graph exists. Forward hooks keep each
   linear layer's input ``A`` and each RMSNorm's normalised input ``xhat`` and register a
   tensor hook on the layer's output.
2. Backward of ``sum_n l_n``. Examples are independent (causal attention within an
   example, right padding), so the activation gradients of example ``n`` are those of
   ``l_n`` alone. When a layer's output gradient ``D`` arrives, its tensor hook computes
   that layer's per-example partial ``<G_n, Lambda>`` and ``|G_n|^2`` with the kernels of
   ``lqs_megatron/kernels/`` ``linear_stats.py`` (direct or ghost), ``embedding_stats.py`` (repeated ids
   exact) and ``norm_stats.py`` (norm weights) and drops ``A``. The LM head's part is fused with the loss
   (``kernels/lm_head_stats.py``: one logits GEMM per chunk of examples gives the losses, the gradient
   wrt the hidden states and the head's statistics; never ``B x T x V`` logits).
3. Sums: ``|g_n|^2`` and ``<g_n, lambda>`` add over layers; under tensor parallelism each
   rank adds its shards' parts (replicated RMSNorm weights on tp rank 0 only) and one
   all-reduce over the tp group finishes both.

Linear biases (Qwen2's q/k/v, Llama's ``attention_bias`` / ``mlp_bias``): the bias gradient of
example ``n`` is ``sum_t D_n[t]`` (``D`` is exactly zero past an example's last loss position),
so its statistics are ``<sum_t D_n[t], lambda_b>`` and ``|sum_t D_n[t]|^2``, computed in torch
beside the weight's (:func:`bias_stats`, ``B x d_out`` numbers). A column-parallel bias is
sharded like its layer's outputs; a row-parallel bias is replicated and counted on tp rank 0.

Tied input/output embeddings: the shared weight's per-example gradient is the sum of both
uses, so ``|g|^2`` gains the cross term ``2 <G_emb, G_head>`` (:func:`tied_cross_term`, two
``T x T`` products per example, exact); the dot products simply add.
"""

from __future__ import annotations

import torch
from torch import nn

from lqs_megatron.errors import LQSError
from lqs_megatron.kernels.embedding_stats import grad_stats_embedding
from lqs_megatron.kernels.linear_stats import grad_stats_linear
from lqs_megatron.kernels.lm_head_stats import lm_head_loss_and_stats
from lqs_megatron.kernels.norm_stats import grad_stats_norm
from lqs_megatron.lqs.examples import Batch
from lqs_megatron.lqs.vectors import Vector
from lqs_megatron.models.decoder import Decoder, RMSNorm
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.parallel.mappings import copy_to_region
from lqs_megatron.training.capture import as_computed, bias_stats, capture_hook, frozen, lm_head


def tied_cross_term(
    ids: torch.Tensor,
    d_emb: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    lse: torch.Tensor,
    vocab_start: int,
    n_valid: int,
) -> torch.Tensor:
    """Per-example ``<G_emb,n, G_head,n>`` of a weight shared by the embedding and the head (this shard).

    ``G_emb[v] = sum_{t: ids_t = v} D_t`` and ``G_head = sum_s dl_s^T h_s`` with
    ``dl_s = w_s (softmax_s - onehot(y_s))``, so ``<G_emb, G_head> = sum_{s,t} dl_s[ids_t] (h_s . D_t)``:
    two ``T x T`` products per example (``h W[ids]^T`` for ``softmax_s[ids_t]``, and ``h D^T``), never
    ``T x V``. Rows ``ids_t`` outside ``[vocab_start, vocab_start + n_valid)`` belong to another shard.
    """
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    m = loss_mask.to(dt)
    w = m / m.sum(1, keepdim=True).clamp_min(torch.finfo(dt).tiny)  # [B, T]
    local = ids - vocab_start
    inside = ((local >= 0) & (local < n_valid) & (loss_mask != 0)).to(dt)  # [B, T_t]
    h = hidden.to(dt)
    w_ids = weight[local.clamp(0, max(n_valid - 1, 0))].to(dt)  # [B, T_t, d]
    x = torch.bmm(h, w_ids.transpose(1, 2)) - lse.to(dt).unsqueeze(2)  # [B, T_s, T_t] log softmax_s[ids_t]
    p = torch.exp(x.masked_fill(w.unsqueeze(2) == 0, float("-inf")))  # rows s past the example: exactly 0
    p -= (labels.unsqueeze(2) == ids.unsqueeze(1)).to(dt)
    p *= w.unsqueeze(2) * inside.unsqueeze(1)
    return (p * torch.bmm(h, d_emb.to(dt).transpose(1, 2))).sum((1, 2))


class ExampleStats:
    """Callable ``(batch, lam) -> (dot [B], sqnorm [B])`` (float64) for ``model``, as described above."""

    def __init__(self, model: Decoder, dims: ParallelDims, backend: str = "auto"):
        self.model = model
        self.tied = model.output.weight is model.tok_embeddings.weight
        self.head_name = "tok_embeddings.weight" if self.tied else "output.weight"
        self.dims = dims
        self.backend = backend
        self.replicated_counted = dims.tp_rank == 0
        self.modules: list[tuple[str, nn.Module]] = []
        covered = set()
        for name, mod in model.named_modules():
            if mod is model.output:
                continue
            if isinstance(mod, (nn.Linear, nn.Embedding, RMSNorm)):
                self.modules.append((name, mod))
                covered.add(f"{name}.weight")
                if isinstance(mod, nn.Linear) and mod.bias is not None:
                    covered.add(f"{name}.bias")
        covered.add("output.weight")
        missing = [n for n, p in model.named_parameters() if n not in covered]
        if missing:
            raise LQSError(f"no per-example statistics rule for parameter(s) {', '.join(missing)}")

    def _rule(self, name: str, mod: nn.Module, lam: Vector, mask: torch.Tensor, head):
        """``(keep, stats)`` of one module: ``keep(mod, input)`` is what its forward hook holds (None: this
        rank adds nothing for it), ``stats(kept, D)`` the ``(dot, sq)`` parts its output gradient ``D`` adds."""
        lam_w, backend = lam[f"{name}.weight"], self.backend
        if isinstance(mod, nn.Embedding):
            start = int(getattr(mod, "vocab_start", 0))

            def embedding(ids: torch.Tensor, grad: torch.Tensor):
                yield grad_stats_embedding(ids, grad, lam_w, start, mask, backend=backend)
                if self.tied:  # |g_emb + g_head|^2 = |g_emb|^2 + |g_head|^2 + 2 <g_emb, g_head>
                    labels, (h, weight, lse) = head()
                    n_valid = min(max(self.model.config.vocab_size - start, 0), weight.shape[0])
                    cross = tied_cross_term(ids, grad, h, weight, labels, mask, lse, start, n_valid)
                    yield torch.zeros_like(cross), 2 * cross

            return (lambda mod, x: x), embedding
        if isinstance(mod, RMSNorm):  # replicated over tp: counted on one rank
            keep = (lambda mod, x: mod.normalize(x.detach())) if self.replicated_counted else (lambda mod, x: None)
            return keep, lambda xhat, grad: [grad_stats_norm(xhat, grad, lam_w, mask, backend=backend)]
        # a replicated (row-parallel) bias is counted on one tp rank; a sharded one on each
        lam_b = None
        if mod.bias is not None and (getattr(mod.bias, "tp_dim", None) is not None or self.replicated_counted):
            lam_b = lam[f"{name}.bias"]

        def linear(a: torch.Tensor, grad: torch.Tensor):
            yield grad_stats_linear(a, grad, lam_w, mask, backend=backend)
            if lam_b is not None:
                yield bias_stats(grad, lam_b)

        return (lambda mod, x: as_computed(x.detach())), linear

    def __call__(self, batch: Batch, lam: Vector) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        B = len(batch)
        dev = batch.input_ids.device
        acc = torch.zeros(2, B, dtype=torch.float64, device=dev)  # rows: dot, sqnorm
        mask = batch.loss_mask

        def add(dot: torch.Tensor, sq: torch.Tensor) -> None:
            acc[0] += dot.double()
            acc[1] += sq.double()

        head_inputs = None  # (hidden, head weight, logsumexp) for the tied cross term, set after the forward
        handles = []
        try:
            for name, mod in self.modules:
                keep, stats = self._rule(name, mod, lam, mask, lambda: (batch.labels, head_inputs))
                handles.append(mod.register_forward_hook(capture_hook(keep, stats, add, isinstance(mod, nn.Embedding))))
            with frozen(model), torch.enable_grad():
                hidden = model(batch.input_ids)
                weight, vocab_start, tp_group = lm_head(model)
                hidden, weight = as_computed(hidden), as_computed(weight)
                losses, dot, sq, lse = lm_head_loss_and_stats(
                    copy_to_region(hidden, tp_group),
                    weight,
                    batch.labels,
                    mask,
                    lam[self.head_name],
                    model.config.vocab_size,
                    vocab_start,
                    tp_group,
                    backend=self.backend,
                )
                head_inputs = (hidden.detach(), weight.detach(), lse)
                add(dot, sq)
                losses.sum().backward()
        finally:
            for h in handles:
                h.remove()
        self.dims.all_reduce(acc, group="tp")
        return acc[0], acc[1]
