"""Per-example <g_n, lambda> and |g_n|^2 over the whole model against torch.func per-example gradients
(vmap(grad) over functional_call, float64), on random padded batches and a random lambda."""

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lqs_megatron.lqs.examples import Batch
from lqs_megatron.lqs.stats import ExampleStats
from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.loading import build_model, load_model
from lqs_megatron.parallel.dims import ParallelDims
from tests.models.families import FAMILIES, save_family
from tests.utils import assert_close

VOCAB = 97


def tiny_model(dtype=torch.float32, seed=0, **kw):
    cfg = ModelConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        initializer_range=0.1,
        **kw,
    )
    model = build_model(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random norm weights, so that a mixed-up norm cannot pass
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.to(dtype)


def random_batch(lengths, seed=0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(0, VOCAB, (B, T), generator=gen)
    labels = torch.randint(0, VOCAB, (B, T), generator=gen)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()
    ids, labels = ids * mask.long(), labels * mask.long()  # right padding with id 0
    return Batch(ids, labels, mask, torch.arange(B).numpy())


def random_lambda(model, seed=0):
    gen = torch.Generator().manual_seed(seed + 7)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in model.named_parameters()}


def torch_func_stats(model, batch: Batch, lam):
    """float64 per-example gradients with vmap(grad(...)) over functional_call, then <g, lam> and |g|^2."""
    model = model.double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, ids, labels, mask):
        hidden = functional_call(model, p, (ids[None],))
        logits = hidden[0] @ p.get("output.weight", p["tok_embeddings.weight"]).T  # tied: one tensor
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return (ce * mask).sum() / mask.sum()

    with sdpa_kernel(SDPBackend.MATH):
        g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, batch.input_ids, batch.labels, batch.loss_mask.double())
    dot = sum((g[n] * lam[n]).flatten(1).sum(1) for n in params)
    sq = sum(g[n].square().flatten(1).sum(1) for n in params)
    return dot, sq


CASES = [  # (dtype, backend, rtol)
    (torch.float32, "torch", 1e-4),
    (torch.float64, "torch", 1e-10),
    (torch.float32, "triton", 1e-4),
]


@pytest.mark.parametrize("dtype,backend,rtol", CASES, ids=["fp32-torch", "fp64-torch", "fp32-triton"])
def test_stats_match_torch_func(dtype, backend, rtol):
    lengths = [9, 1, 6, 4] if backend == "triton" else [13, 7, 1, 10, 13, 3]
    model = tiny_model(dtype)
    batch = random_batch(lengths)
    lam = random_lambda(model)
    ref_dot, ref_sq = torch_func_stats(tiny_model(torch.float64), batch, lam)
    stats = ExampleStats(model, ParallelDims(), backend=backend)
    dot, sq = stats(batch, {n: t.to(dtype) for n, t in lam.items()})
    assert dot.dtype == sq.dtype == torch.float64
    assert_close(sq, ref_sq, rtol=rtol, name="|g_n|^2")
    assert_close(sq.sqrt(), ref_sq.sqrt(), rtol=rtol, name="|g_n|")
    assert_close(dot, ref_dot, rtol=rtol, name="<g_n, lambda>")
    # parameters are left as they were (requires_grad restored, no .grad written)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_stats_do_not_depend_on_batch_company():
    """An example's statistics are its own: alone or padded among others, the same numbers."""
    model = tiny_model(torch.float64)
    lam = random_lambda(model)
    batch = random_batch([5, 12, 8])
    stats = ExampleStats(model, ParallelDims(), backend="torch")
    dot, sq = stats(batch, lam)
    alone = Batch(batch.input_ids[:1, :5], batch.labels[:1, :5], batch.loss_mask[:1, :5], batch.indices[:1])
    d1, s1 = stats(alone, lam)
    assert_close(d1, dot[:1], rtol=1e-12, name="dot alone")
    assert_close(s1, sq[:1], rtol=1e-12, name="sq alone")


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_tied_embeddings_include_the_cross_term(dtype, rtol):
    """A weight shared by the embedding and the head: |g|^2 of the sum of both uses (the cross term)."""
    model = tiny_model(dtype, tie_word_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    batch = random_batch([11, 5, 1, 8])
    lam = random_lambda(model)
    ref_dot, ref_sq = torch_func_stats(tiny_model(torch.float64, tie_word_embeddings=True), batch, lam)
    dot, sq = ExampleStats(model, ParallelDims(), backend="torch")(batch, {n: t.to(dtype) for n, t in lam.items()})
    assert_close(sq, ref_sq, rtol=rtol, name="|g_n|^2 (tied)")
    assert_close(dot, ref_dot, rtol=rtol, name="<g_n, lambda> (tied)")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_stats_match_torch_func(tmp_path, family):
    """Every supported family loaded from HF (q/k/v/o/MLP biases, llama3 rope, a sliding window shorter
    than the batch, tied embeddings): float64 statistics equal vmap(grad) per-example gradients."""
    save_family(family, tmp_path / "hf", vocab=VOCAB)
    model = load_model(tmp_path / "hf", dtype=torch.float64)
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert bool(biases) == (family in ("qwen25", "llama_bias")), biases
    batch = random_batch([13, 7, 1, 10, 6], seed=3)
    lam = random_lambda(model)
    ref_dot, ref_sq = torch_func_stats(load_model(tmp_path / "hf", dtype=torch.float64), batch, lam)
    dot, sq = ExampleStats(model, ParallelDims(), backend="torch")(batch, lam)
    assert_close(sq, ref_sq, rtol=1e-10, name=f"|g_n|^2 ({family})")
    assert_close(dot, ref_dot, rtol=1e-10, name=f"<g_n, lambda> ({family})")
