"""The scorer model: pooling, backbones against transformers, batch independence, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
from lqs_megatron.errors import LQSError
from lqs_megatron.scorer.model import build_scorer, load_scorer, save_scorer
from lqs_megatron.scorer.predict import collate, length_batches, predict
from tests.scorer.helpers import write_token_dataset
from tests.utils import assert_close, rel_err


def _hf_dir(tmp_path_factory, tokenizer_dir: str, kind: str) -> str:
    import transformers

    torch.manual_seed(0)
    if kind == "mistral":
        cfg = transformers.MistralConfig(
            vocab_size=512,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        model = transformers.MistralForCausalLM(cfg)
    else:  # a non-Llama causal LM: DELT's fairseq-dense family is XGLM in transformers
        cfg = transformers.XGLMConfig(
            vocab_size=512, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=256
        )
        model = transformers.XGLMForCausalLM(cfg)
    out = tmp_path_factory.mktemp(kind)
    model.save_pretrained(out)
    load_tokenizer(tokenizer_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory, tiny_tokenizer):
    return _hf_dir(tmp_path_factory, tiny_tokenizer, "mistral")


@pytest.fixture(scope="module")
def xglm_dir(tmp_path_factory, tiny_tokenizer):
    return _hf_dir(tmp_path_factory, tiny_tokenizer, "xglm")


def _random_seqs(n: int, seed: int, lo: int = 1, hi: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 512, size=int(rng.integers(lo, hi))) for _ in range(n)]


def _hf_reference_pooled(hf_base, seqs, bos) -> torch.Tensor:
    """Mean of the HF base model's last hidden state, one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([[bos, *s.tolist()]])
            out.append(hf_base(input_ids=ids).last_hidden_state[0].double().mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["mistral", "xglm"])
def test_pooled_hidden_states_match_transformers(kind, mistral_dir, xglm_dir, tmp_path):
    import transformers

    path = mistral_dir if kind == "mistral" else xglm_dir
    scorer, cfg, _ = build_scorer(base=path, max_length=256)
    assert cfg.backbone == ("decoder" if kind == "mistral" else "hf")
    scorer.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).float().eval().base_model
    seqs = _random_seqs(7, seed=3)
    ds = write_token_dataset(tmp_path / "d", seqs)
    ids, lens = collate(ds, np.arange(7), cfg)  # right-padded batch
    with torch.no_grad():
        pooled = scorer.pooled(torch.from_numpy(ids), torch.from_numpy(lens))
    ref = _hf_reference_pooled(hf, seqs, cfg.bos_token_id)
    assert_close(pooled, ref, rtol=1e-5, atol=1e-6, name=f"{kind} pooled")
    with torch.no_grad():
        score = scorer(torch.from_numpy(ids), torch.from_numpy(lens))
    expected = ref @ scorer.head.weight.double()[0] + scorer.head.bias.double()
    assert_close(score, expected, rtol=1e-5, atol=1e-6, name=f"{kind} score")


def test_scores_do_not_depend_on_batching(tiny_tokenizer, tmp_path):
    scorer, cfg, _ = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=48, seed=1)
    scorer.eval()
    seqs = _random_seqs(40, seed=4, hi=90)  # some longer than max_length: cut
    ds = write_token_dataset(tmp_path / "d", seqs)
    one_by_one = np.array(
        [predict(scorer, cfg, ds, np.array([i]), torch.device("cpu"))[0] for i in range(len(seqs))], dtype=np.float32
    )
    for max_tokens, max_rows in [(48, 1), (200, 7), (10_000, 512)]:
        got = predict(scorer, cfg, ds, np.arange(len(seqs)), torch.device("cpu"), max_tokens, max_rows)
        np.testing.assert_allclose(got, one_by_one, rtol=1e-6, atol=1e-6)
    # a random order of requests returns the scores in request order
    perm = np.random.default_rng(0).permutation(len(seqs))
    got = predict(scorer, cfg, ds, perm, torch.device("cpu"), 300, 5)
    np.testing.assert_allclose(got, one_by_one[perm], rtol=1e-6, atol=1e-6)


def test_length_batches_respect_the_token_budget():
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    batches = length_batches(lengths, max_tokens=1024, max_batch_size=16)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(1000))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or len(b) * lengths[b].max() <= 1024)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.1 * lengths.sum()  # sorting leaves little padding


def test_save_load_roundtrip_is_exact(tiny_tokenizer, xglm_dir, tmp_path):
    ids = torch.randint(4, 512, (3, 20))
    lens = torch.tensor([20, 11, 3])
    for name, kw in [("dec", dict(model_config="tiny", tokenizer=tiny_tokenizer)), ("hf", dict(base=xglm_dir))]:
        scorer, cfg, tok = build_scorer(max_length=64, seed=2, **kw)
        (tmp_path / name).mkdir()
        save_scorer(scorer, cfg, tok, tmp_path / name)
        loaded, cfg2, _ = load_scorer(tmp_path / name)
        assert cfg2 == cfg
        assert (tmp_path / name / "tokenizer").is_dir()
        with torch.no_grad():
            assert torch.equal(scorer.eval()(ids, lens), loaded(ids, lens))


def test_collate_rejects_ids_beyond_the_vocabulary(tiny_tokenizer, tmp_path):
    _, cfg, _ = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=32)
    ds = write_token_dataset(tmp_path / "d", [[5, 6, 7], [8, 600, 9]])
    with pytest.raises(LQSError, match="sequence 1 holds token id 600, outside the scorer's vocabulary of 512"):
        collate(ds, np.arange(2), cfg)


def test_build_scorer_flag_errors(tiny_tokenizer, tmp_path):
    with pytest.raises(LQSError, match="exactly one"):
        build_scorer()
    with pytest.raises(LQSError, match="needs --tokenizer"):
        build_scorer(model_config="tiny")
    with pytest.raises(LQSError, match="does not exist"):
        build_scorer(base=str(tmp_path / "nope"))


def test_base_can_be_a_lqs_pretrain_checkpoint(tiny_tokenizer, tmp_path):
    from lqs_megatron.models.config import load_model_config
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.parallel.dims import ParallelDims
    from lqs_megatron.training.checkpoint import save_checkpoint
    from lqs_megatron.training.optim import build_optimizer

    cfg = load_model_config("tiny", vocab_size=512)
    lm = build_model(cfg, seed=5, make_vocab_size_divisible_by=384)  # 768 embedding rows: padded vocabulary
    meta = {"model": cfg.to_dict(), "padded_vocab_size": lm.padded_vocab_size, "tp": 1}
    meta.update(make_vocab_size_divisible_by=384, step=3)
    tok = load_tokenizer(tiny_tokenizer)
    save_checkpoint(tmp_path / "lm", 3, lm, build_optimizer(lm, 1e-3), ParallelDims(), meta, {}, tok)

    scorer, scfg, tok = build_scorer(base=str(tmp_path / "lm"), max_length=64)
    assert scfg.backbone == "decoder" and scfg.padded_vocab_size == 768 and scfg.vocab_size == 512
    assert tok.endswith("tokenizer") and scfg.tokenizer["vocab_size"] == 512
    ids, lens = torch.randint(4, 512, (2, 12)), torch.tensor([12, 7])
    with torch.no_grad():
        h = lm(ids)
        ref = torch.stack([h[0, :12].mean(0), h[1, :7].mean(0)])
        assert_close(scorer.eval().pooled(ids, lens), ref, rtol=1e-6, atol=1e-6, name="pooled")
    (tmp_path / "s").mkdir()
    save_scorer(scorer, scfg, tok, tmp_path / "s")
    loaded, _, _ = load_scorer(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(loaded(ids, lens), scorer(ids, lens))


@pytest.mark.parametrize("kind", ["decoder", "hf"])
def test_bf16_inference_keeps_rotary_frequencies_and_stays_close(kind, tiny_tokenizer, xglm_dir, tmp_path):
    from lqs_megatron.scorer.infer import prepare_for_inference

    kw = dict(model_config="tiny", tokenizer=tiny_tokenizer) if kind == "decoder" else dict(base=xglm_dir)
    scorer, cfg, _ = build_scorer(max_length=200, seed=4, **kw)
    torch.nn.init.normal_(scorer.head.weight, std=1.0)
    ds = write_token_dataset(tmp_path / "d", _random_seqs(12, seed=5, lo=100, hi=199))
    cpu = torch.device("cpu")
    ref = predict(scorer.eval(), cfg, ds, np.arange(12), cpu)
    net, amp = prepare_for_inference(scorer, cpu, bf16=True, compile=False)  # what CUDA runs, here on the CPU
    if kind == "decoder":
        assert amp is None and net.backbone.tok_embeddings.weight.dtype == torch.bfloat16
        # no buffer to round: the rotary tables are computed in float32 on every call (bf16 ones would
        # skew long positions)
        assert not list(net.backbone.buffers())
    else:
        assert amp == torch.bfloat16 and next(net.backbone.parameters()).dtype == torch.float32
    got = predict(net, cfg, ds, np.arange(12), cpu, autocast=amp)
    assert got.dtype == np.float32
    assert rel_err(got, ref) < 0.05
