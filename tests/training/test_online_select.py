"""Online data selection (training/online.py) against float64 torch.func per-example gradients: the
candidates' scores <g_i, grad L_tgt>, their Gram matrix, the kept sets of ``dot`` and ``greedy``, the
one-backward update against a plain optimizer step on the kept samples, micro-batching, greedy under
dp2 (gloo), a non-finite step, bf16 autocast on the CPU and (gpu-marked) the pass on CUDA."""

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.loss import CausalLMLoss
from lqs_megatron.training.online import (
    CandidatePass,
    OnlineSettings,
    OnlineStep,
    embedding_gram,
    linear_gram,
    select_kept,
)
from lqs_megatron.training.optim import WarmupCosine, build_optimizer
from lqs_megatron.training.step import TrainStep, autocast
from tests.lqs.test_stats import random_batch, tiny_model
from tests.utils import assert_close, spawn

N, T, KEEP = 8, 10, 3


def candidates(seed=11, n=N):
    """Packed-style candidates: every position real, fresh random ids."""
    b = random_batch([T] * n, seed=seed)
    return b.input_ids, b.labels, b.loss_mask


def target(seed=23):
    b = random_batch([9, 4, 7, 2, 9], seed=seed)  # padded: the target set's examples differ in length
    return b.input_ids, b.labels, b.loss_mask


def per_example_grads(model, ids, labels, mask) -> dict:
    """float64 per-example gradients ``{name: [n, *shape]}`` with vmap(grad) over functional_call."""
    model = copy.deepcopy(model).double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, i, y, m):
        hidden = functional_call(model, p, (i[None],))
        logits = hidden[0] @ p["output.weight"].T
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        return (ce * m).sum() / m.sum()

    with sdpa_kernel(SDPBackend.MATH):
        return vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, ids, labels, mask.double())


def flat(g: dict) -> torch.Tensor:
    return torch.cat([v.flatten(1) for v in g.values()], 1)


def greedy_reference(s, gram, keep, rate):
    """The greedy rule written out: each round recomputes every unpicked gain from scratch."""
    picked = []
    for _ in range(keep):
        best, best_gain = None, None
        for i in range(len(s)):
            if i in picked:
                continue
            gain = s[i] - rate * (0.5 * gram[i, i] + sum(gram[i, j] for j in picked))
            if best_gain is None or gain > best_gain:
                best, best_gain = i, gain
        picked.append(best)
    return sorted(picked)


def _step(model, settings, target_mb, lr=3e-3, **kw):
    opt = build_optimizer(model, lr)
    sched = WarmupCosine(lr, lr / 10, 0, 10)
    return OnlineStep(
        CausalLMLoss(model, backend="torch"),
        ParallelDims(),
        opt,
        sched,
        settings,
        lambda step: (target_mb, sum(len(m[0]) for m in target_mb or ())),
        backend="torch",
        **kw,
    )


def _micro(batch, size):
    return [tuple(x[s : s + size] for x in batch) for s in range(0, len(batch[0]), size)]


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "qkv-bias"])
def test_scores_and_gram_match_torch_func(bias):
    model = tiny_model(torch.float64, qkv_bias=bias, architecture="qwen2" if bias else "mistral")
    cand, tgt = candidates(), target()
    g = per_example_grads(model, *cand)
    gt = per_example_grads(model, *tgt)
    g_tgt = {n: v.mean(0) for n, v in gt.items()}
    ref_scores = flat(g) @ torch.cat([v.flatten() for v in g_tgt.values()])
    ref_gram = flat(g) @ flat(g).T

    step = _step(model, OnlineSettings("greedy", KEEP, 2, 1), [tgt])
    g_engine = step.target_gradient(0)
    for n in g_tgt:
        assert_close(g_engine[n], g_tgt[n], rtol=1e-10, name=f"target gradient {n}")
    engine = CandidatePass(model, ParallelDims(), backend="torch")
    out = engine.run([cand], g_engine, True, lambda: autocast(None, None))
    assert_close(out.scores, ref_scores, rtol=1e-10, name="scores")
    assert_close(out.gram, ref_gram, rtol=1e-10, name="gram")
    assert all(p.requires_grad and p.grad is None for p in model.parameters())

    s, K = ref_scores.numpy(), ref_gram.numpy()
    kept_dot = select_kept("dot", out.scores.numpy(), KEEP)
    assert list(kept_dot) == sorted(np.argsort(-s, kind="stable")[:KEEP].tolist())
    rate = 2 * np.abs(s).max() / np.diag(K).mean()  # interactions as large as the scores: the rule matters
    kept_greedy = select_kept("greedy", out.scores.numpy(), KEEP, out.gram.numpy(), rate)
    assert list(kept_greedy) == greedy_reference(s, K, KEEP, rate)

    # the kept samples' gradient, assembled from the held activations and output gradients
    w = torch.zeros(N, dtype=torch.float64)
    w[torch.as_tensor(kept_greedy)] = 1.0 / KEEP
    engine.assemble(w)
    for n, p in model.named_parameters():
        ref = torch.einsum("n,n...->...", w, g[n])
        assert_close(p.grad, ref, rtol=1e-10, atol=1e-13 * float(ref.abs().max()), name=f"kept gradient {n}")


def test_greedy_rule_departs_from_dot_on_redundant_candidates():
    """Two identical candidates with the best score: greedy keeps one of them and takes a fresh one."""
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2]])
    tgt = np.array([1.0, 0.8])
    s, K = g @ tgt, g @ g.T
    assert list(select_kept("dot", s, 2)) == [0, 1]
    assert list(select_kept("greedy", s, 2, K, rate=0.5)) == [0, 2] == greedy_reference(s, K, 2, 0.5)
    ties = select_kept("dot", np.array([1.0, 2.0, 2.0, 2.0]), 2)
    assert list(ties) == [1, 2]  # ties to the lower position


def test_boltzmann_is_seeded_and_follows_the_scores():
    s = np.linspace(-1, 1, 40)
    a = select_kept("boltzmann", s, 10, temperature=0.1, seed=7)
    assert list(a) == list(select_kept("boltzmann", s, 10, temperature=0.1, seed=7))
    warm = [list(select_kept("boltzmann", s, 10, temperature=1.0, seed=k)) for k in (7, 8)]
    assert warm[0] != warm[1]
    assert s[a].mean() > 0.5  # a low temperature keeps the top scores mostly
    hot = np.mean([s[select_kept("boltzmann", s, 10, temperature=100.0, seed=k)].mean() for k in range(50)])
    assert abs(hot) < 0.2  # a high one is close to uniform


@pytest.mark.parametrize("method", ["direct", "ghost"])
def test_linear_and_embedding_gram(method, monkeypatch):
    import lqs_megatron.training.online as online

    monkeypatch.setattr(online, "_CHUNK", 50)  # several chunks of columns, rows and examples
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(5, 7, 6, dtype=torch.float64, generator=gen)
    D = torch.randn(5, 7, 4, dtype=torch.float64, generator=gen)
    G = torch.einsum("nti,nto->nio", A, D).flatten(1)
    assert_close(linear_gram(A, D, method), G @ G.T, rtol=1e-12, name=method)
    ids = torch.randint(0, 9, (5, 7), generator=gen)  # repeated ids within and across examples
    E = torch.zeros(5, 9, 4, dtype=torch.float64)
    for n in range(5):
        E[n].index_add_(0, ids[n], D[n])
    shard = E[:, 3:8].flatten(1)  # a vocabulary shard: rows 3..7
    assert_close(embedding_gram(ids, D, 3, 5, method), shard @ shard.T, rtol=1e-12, name=f"embedding shard {method}")


@pytest.mark.parametrize("method", ["dot", "greedy"])
def test_update_equals_a_plain_step_on_the_kept(method):
    model = tiny_model(torch.float64)
    plain = copy.deepcopy(model)
    cand, tgt = candidates(seed=5), target(seed=6)
    step = _step(model, OnlineSettings(method, KEEP, 2, 1), [tgt])
    res = step(_micro(cand, 4), N, 0)
    kept = step.record.kept
    assert len(kept) == KEEP and res.finite
    opt = build_optimizer(plain, 3e-3)
    ref_step = TrainStep(CausalLMLoss(plain, backend="torch"), ParallelDims(), opt, WarmupCosine(3e-3, 3e-4, 0, 10))
    ref = ref_step([tuple(x[torch.as_tensor(kept)] for x in cand)], KEEP, 0)
    # TrainStep reports its loss and norm in float32 (the weights below are compared in float64)
    assert abs(res.loss - ref.loss) <= 1e-6 * abs(ref.loss)
    assert abs(res.grad_norm - ref.grad_norm) <= 1e-6 * ref.grad_norm
    start = tiny_model(torch.float64).state_dict()
    moved = 0.0
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert_close(p, q, rtol=1e-12, atol=1e-15, name=n)
        moved += float((q.detach() - start[n]).norm())
    assert moved > 1e-3  # the step did move the weights


@pytest.mark.parametrize("method", ["dot", "greedy", "boltzmann"])
def test_micro_batches_equal_one_batch(method):
    cand, tgt = candidates(seed=8), target(seed=9)
    results = []
    for micro, tmicro in ((N, 5), (2, 2), (1, 3)):
        model = tiny_model(torch.float64)
        step = _step(model, OnlineSettings(method, KEEP, 2, 1, temperature=0.5, seed=4), _micro(tgt, tmicro))
        res = step(_micro(cand, micro), N, 0)
        results.append((list(step.record.kept), step.record.scores, res, dict(model.named_parameters())))
    kept0, scores0, res0, params0 = results[0]
    for kept, scores, res, params in results[1:]:
        assert kept == kept0
        assert_close(scores, scores0, rtol=1e-11, name="scores")
        assert abs(res.loss - res0.loss) <= 1e-12 * abs(res0.loss)
        for n, p in params.items():
            assert_close(p, params0[n], rtol=1e-12, atol=1e-15, name=n)


def test_a_non_finite_step_is_not_applied_and_tied_embeddings_are_refused():
    model = tiny_model(torch.float64)
    with torch.no_grad():
        model.layers[0].attention.wo.weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cand, tgt = candidates(seed=2), target(seed=3)
    res = _step(model, OnlineSettings("dot", KEEP, 2, 1), [tgt])(_micro(cand, 4), N, 0)
    assert not res.finite
    for n, p in model.named_parameters():
        assert torch.equal(p.detach().nan_to_num(7.0), before[n].nan_to_num(7.0)), n
    with pytest.raises(LQSError, match="tied input/output embeddings"):
        CandidatePass(tiny_model(torch.float64, tie_word_embeddings=True), ParallelDims())


def test_bf16_autocast_pass_follows_float32():
    """Under bf16 autocast (what CUDA runs) the held inputs are the bf16 copies the GEMMs multiply (one per
    tensor: q/k/v share theirs); scores and the assembled gradient stay close to float32's."""
    cand, tgt = candidates(seed=4), target(seed=5)
    out = {}
    for amp in (None, torch.bfloat16):
        model = tiny_model(torch.float32)
        step = _step(model, OnlineSettings("dot", KEEP, 2, 1), [tgt], amp_dtype=amp)
        g_tgt = step.target_gradient(0)
        engine = CandidatePass(model, ParallelDims(), backend="torch")
        res = engine.run([cand], g_tgt, False, lambda amp=amp: autocast(torch.device("cpu"), amp))
        attn = model.layers[0].attention
        held = {n: getattr(attn, n) for n in ("wq", "wk", "wv")}
        layers = {id(layer.module): layer for layer in engine.layers}
        a = [layers[id(m)].held[0][0] for m in held.values()]
        assert a[0] is a[1] is a[2]  # one held copy of the shared input
        assert a[0].dtype == (amp or torch.float32)
        engine.assemble(torch.full((N,), 1.0 / N, dtype=torch.float64))
        out[amp] = (res.scores, torch.cat([p.grad.flatten() for p in model.parameters()]))
    (s32, g32), (s16, g16) = out[None], out[torch.bfloat16]
    assert float((s16 - s32).norm() / s32.norm()) < 5e-2
    assert float((g16 - g32).norm() / g32.norm()) < 5e-2


def _dp2_greedy_worker(rank: int, world: int) -> None:
    from lqs_megatron.parallel.dims import init_distributed, rank_slice

    dims = init_distributed(tp=1, device="cpu")
    cand, tgt = candidates(seed=12), target(seed=13)
    # one process: scores and Gram of all 8 candidates, the rule applied to each rank's half (2 of 4 kept)
    ref = _step(tiny_model(torch.float64), OnlineSettings("greedy", 4, 2, 1), [tgt])
    out = ref.cand.run([cand], ref.target_gradient(0), True, ref.autocast)
    s, K = out.scores.numpy(), out.gram.numpy()
    kept = []
    for h in (0, 1):
        part = slice(4 * h, 4 * h + 4)
        kept += [4 * h + int(i) for i in select_kept("greedy", s[part], 2, K[part, part], 3e-3 / 4)]
    # dp2: this rank's half of the candidates and of the target batch
    model = tiny_model(torch.float64)
    lo, hi = rank_slice(5, 2, rank)
    step = OnlineStep(
        CausalLMLoss(model, backend="torch"),
        dims,
        build_optimizer(model, 3e-3),
        WarmupCosine(3e-3, 3e-4, 0, 10),
        OnlineSettings("greedy", 4, 2, 1),
        lambda _: ([tuple(x[lo:hi] for x in tgt)], 5),
        backend="torch",
    )
    res = step([tuple(x[4 * rank : 4 * rank + 4] for x in cand)], 4, 0)
    assert res.finite and list(step.record.kept) == sorted(kept), (list(step.record.kept), kept)
    assert_close(torch.from_numpy(step.record.scores), out.scores, rtol=1e-10, name="scores over dp")
    plain = tiny_model(torch.float64)
    ref_step = TrainStep(
        CausalLMLoss(plain, backend="torch"),
        ParallelDims(),
        build_optimizer(plain, 3e-3),
        WarmupCosine(3e-3, 3e-4, 0, 10),
    )
    ref_step([tuple(x[torch.as_tensor(sorted(kept))] for x in cand)], 4, 0)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert_close(p, q, rtol=1e-12, atol=1e-15, name=f"{n} (rank {rank})")


@pytest.mark.distributed
def test_dp2_greedy_selects_per_rank_and_sums_the_kept_gradients():
    """greedy under dp keeps B/dp of each rank's candidates (interactions within the rank); the kept set is
    known to every rank and the update equals one process's plain step on it."""
    spawn(_dp2_greedy_worker, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_candidate_pass_on_cuda_matches_torch_func(amp):
    """The candidate pass as ``lqs pretrain --online-select`` runs it on a GPU (the Triton kernels, bf16
    autocast): scores, Gram and the assembled gradient against float64 torch.func on the CPU."""
    from tests.kernels.tolerances import rtol
    from tests.utils import rel_err

    model = tiny_model(torch.float64)
    cand = candidates(seed=21)
    g = per_example_grads(model, *cand)
    lam = {
        n: torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        for n, p in model.named_parameters()
    }
    ref_scores = flat(g) @ torch.cat([v.flatten() for v in lam.values()])
    ref_gram = flat(g) @ flat(g).T
    dev = torch.device("cuda")
    cuda_model = tiny_model(torch.float32).to(dev)
    engine = CandidatePass(cuda_model, ParallelDims(device=dev))
    out = engine.run(
        [tuple(x.to(dev) for x in cand)],
        {n: t.float().to(dev) for n, t in lam.items()},
        True,
        lambda: autocast(dev, torch.bfloat16 if amp else None),
    )
    tol = rtol("model", torch.bfloat16 if amp else torch.float32, gpu=True)
    assert rel_err(out.scores.cpu(), ref_scores) < tol and rel_err(out.gram.cpu(), ref_gram) < tol
    w = torch.zeros(N, dtype=torch.float64)
    w[:KEEP] = 1.0 / KEEP
    engine.assemble(w.to(dev))
    for n, p in cuda_model.named_parameters():
        assert rel_err(p.grad.cpu(), torch.einsum("n,n...->...", w, g[n])) < tol, n
