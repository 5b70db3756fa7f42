"""Every supported model family (tests/models/families.py) through the production converter against
transformers: logits, `lqs evaluate`'s loss, the scorer backbone, the `export-hf` round trip from a
checkpoint (config, generation config, tokenizer), tp=2 against one process; and the clear refusal
of every config field the decoder does not compute exactly."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lqs_megatron.data.datasets.indexed import IndexedDatasetWriter
from lqs_megatron.errors import LQSError
from lqs_megatron.models.hf import config_from_hf
from lqs_megatron.models.loading import load_model
from tests.models.families import FAMILIES, LLAMA3_ROPE, family_config, padded_batch, save_family
from tests.utils import assert_close, rel_err, spawn

VOCAB = 97


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tmp_path, family):
    hf = save_family(family, tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()  # what annotate / evaluate / pretrain --init load
    assert ours.config.architecture == family_config(family).model_type
    assert ours.config.num_parameters() == sum(p.numel() for p in hf.parameters())  # biases counted, tied once
    ids, mask = padded_batch(VOCAB)  # lengths up to 13: past the Mistral window of 4 and the llama3 context 32/4
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ours(ids))
    real = mask.bool()
    assert rel_err(got[real], ref[real]) < 1e-5
    assert_close(got[real], ref[real], rtol=1e-4, atol=1e-5, name=f"{family} logits")


def _write(prefix, seqs):
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for s in seqs:
            w.add_document(list(s))


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_equals_transformers_loss(tmp_path, family, capsys):
    from lqs_megatron.cli import main

    hf = save_family(family, tmp_path / "hf")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, VOCAB, n) for n in (14, 5, 9, 20, 2)]
    _write(tmp_path / "data", seqs)
    L = 12
    argv = ["evaluate", "--model", str(tmp_path / "hf"), "--data", str(tmp_path / "data"), "--max-length", str(L)]
    assert main([*argv, "--batch-size", "2", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    losses = []
    with torch.no_grad():
        for s in seqs:
            x = torch.tensor(s[: L + 1], dtype=torch.long)[None]
            losses.append(F.cross_entropy(hf(input_ids=x[:, :-1]).logits[0], x[0, 1:]).item())
    assert got["examples"] == 5 and got["tokens"] == sum(min(len(s), L + 1) - 1 for s in seqs)
    assert abs(got["loss"] - np.mean(losses)) <= 1e-5 * abs(np.mean(losses))


@pytest.mark.parametrize("family", FAMILIES)
def test_scorer_backbone_is_the_fast_path(tmp_path, family, tiny_tokenizer):
    """`train-scorer --base` takes our decoder for every family, with transformers' hidden states."""
    import shutil

    from lqs_megatron.scorer.model import build_scorer

    hf = save_family(family, tmp_path / "hf", vocab=520)
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copy(f"{tiny_tokenizer}/{f}", tmp_path / "hf" / f)
    scorer, scfg, _ = build_scorer(base=str(tmp_path / "hf"), max_length=32)
    assert scfg.backbone == "decoder"
    ids, mask = padded_batch(520)
    with torch.no_grad():
        h = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        got = scorer.pooled(ids, mask.sum(1))
    assert rel_err(got, ref) < 1e-5


def test_scorer_falls_back_to_transformers(tmp_path, tiny_tokenizer):
    """A config the fast path refuses (yarn rope scaling) becomes the generic HF backbone."""
    import shutil

    from lqs_megatron.scorer.model import build_scorer

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    save_family("smollm2", tmp_path / "hf", vocab=520, rope_scaling=yarn)
    with pytest.raises(LQSError, match="yarn"):
        load_model(tmp_path / "hf")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{tiny_tokenizer}/{f}", tmp_path / "hf" / f)
    scorer, scfg, _ = build_scorer(base=str(tmp_path / "hf"), max_length=32)
    assert scfg.backbone == "hf"
    ids, mask = padded_batch(520)
    assert scorer(ids, mask.sum(1)).shape == (4,)


def _hf_dict(family: str, **changes) -> dict:
    d = family_config(family).to_dict()
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def _legacy_rope(family: str, rope: dict) -> dict:
    """The 4.x form (rope_scaling + rope_theta), whichever transformers wrote the dict."""
    return _hf_dict(family, rope_parameters=None, rope_scaling=rope, rope_theta=10000.0)


REFUSED = {
    "yarn": (_legacy_rope("smollm2", {"rope_type": "yarn", "factor": 4.0}), "rope scaling type 'yarn'"),
    "dynamic": (_legacy_rope("smollm2", {"type": "dynamic", "factor": 2.0}), "rope scaling type 'dynamic'"),
    "longrope_5x": (
        _hf_dict("smollm2", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}, rope_scaling=None),
        "rope scaling type 'longrope'",
    ),
    "llama3_incomplete": (
        _legacy_rope("llama32", {"rope_type": "llama3", "factor": 8.0}),
        "lacks the number",
    ),
    "mistral_scaled": (_legacy_rope("mistral_window", dict(LLAMA3_ROPE)), "on a Mistral model is not supported"),
    "partial_rotary": (_hf_dict("smollm2", partial_rotary_factor=0.5), "partial_rotary_factor"),
    "qwen2_window": (_hf_dict("qwen25", use_sliding_window=True, sliding_window=4), "use_sliding_window"),
    "qwen2_head_dim": (_hf_dict("qwen25", head_dim=16), "head_dim"),
    "gelu": (_hf_dict("llama_bias", hidden_act="gelu"), "activation 'gelu'"),
    "dropout": (_hf_dict("qwen25", attention_dropout=0.1), "attention_dropout"),
    "pretraining_tp": (_hf_dict("smollm2", pretraining_tp=2), "pretraining_tp"),
    "quantized": (_hf_dict("smollm2", quantization_config={"quant_method": "gptq"}), "quantized"),
    "gpt2": ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'gpt2'"),
    "opt": ({"model_type": "opt", "architectures": ["OPTForCausalLM"]}, "unsupported architecture 'opt'"),
    "not_causal": (_hf_dict("qwen25", architectures=["Qwen2ForSequenceClassification"]), "not a causal LM"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_configs_are_refused(case):
    hf, message = REFUSED[case]
    with pytest.raises(LQSError, match=message):
        config_from_hf(hf)


def test_refusal_is_one_cli_line(tmp_path, capsys):
    from lqs_megatron.cli import main

    save_family("qwen25", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "use_sliding_window": True}))
    _write(tmp_path / "data", [[1, 2, 3]])
    assert (
        main(["evaluate", "--model", str(tmp_path / "hf"), "--data", str(tmp_path / "data"), "--max-length", "4"]) == 1
    )
    err = capsys.readouterr().err
    assert "lqs evaluate: error:" in err and "use_sliding_window" in err and "Traceback" not in err


def test_supported_legacy_and_new_rope_forms_agree():
    """4.x (rope_scaling + rope_theta) and 5.x (rope_parameters) spellings give the same config."""
    new = _hf_dict("llama32", rope_scaling=None, rope_theta=None)
    new["rope_parameters"] = {**LLAMA3_ROPE, "rope_theta": 10000.0}
    old = _legacy_rope("llama32", dict(LLAMA3_ROPE))
    assert config_from_hf(new) == config_from_hf(old)
    assert config_from_hf(old).rope_scaling == LLAMA3_ROPE and config_from_hf(old).rope_theta == 10000.0


def _sharded(full: dict, par_model, rank: int) -> dict:
    """This rank's slices of full-model tensors (vocabulary rows zero-padded to the sharded model's)."""
    from lqs_megatron.models.parallelize import tp_dim_of

    out = {}
    for name, p in par_model.named_parameters():
        t, d = full[name], tp_dim_of(name)
        if name in ("tok_embeddings.weight", "output.weight"):
            t = torch.cat([t, t.new_zeros(par_model.padded_vocab_size - t.shape[0], t.shape[1])])
        out[name] = t if d is None else t.chunk(2, dim=d)[rank]
        assert out[name].shape == p.shape, name
    return out


def _check_family_tp2(rank, dims, family, hf_dir, ckpt, tokenizer_dir):
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.lqs.examples import Batch
    from lqs_megatron.lqs.stats import ExampleStats
    from lqs_megatron.parallel.dims import ParallelDims
    from lqs_megatron.training.checkpoint import save_checkpoint
    from lqs_megatron.training.loss import per_example_lm_loss

    dense = load_model(hf_dir, None, dtype=torch.float64)
    par = load_model(hf_dir, dims, dtype=torch.float64)
    replicated = [n for n, p in par.named_parameters() if getattr(p, "tp_dim", None) is None]
    assert all(n.endswith(("norm.weight", "wo.bias", "w2.bias")) for n in replicated), replicated
    ids, mask = padded_batch(521, lengths=(13, 6, 9), seed=rank * 0)  # same batch on both ranks
    labels = torch.roll(ids, -1, dims=1) * mask
    assert_close(par.logits(par(ids)), dense.logits(dense(ids)), rtol=1e-10, atol=1e-12, name=f"{family} logits")
    loss_d = per_example_lm_loss(dense, ids, labels, mask.double())
    loss_p = per_example_lm_loss(par, ids, labels, mask.double())
    assert_close(loss_p, loss_d, rtol=1e-11, name=f"{family} tp loss")
    loss_d.sum().backward()
    loss_p.sum().backward()
    full_grads = {n: p.grad for n, p in dense.named_parameters()}
    for n, g in _sharded(full_grads, par, rank).items():
        assert_close(dict(par.named_parameters())[n].grad, g, rtol=1e-9, atol=1e-13, name=f"{family} grad {n}")
    # per-example statistics: the sharded model with the sharded lambda equals the dense one
    gen = torch.Generator().manual_seed(3)
    lam = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in dense.named_parameters()}
    batch = Batch(ids, labels, mask.double(), np.arange(3))
    ref_dot, ref_sq = ExampleStats(dense, ParallelDims(), backend="torch")(batch, lam)
    dot, sq = ExampleStats(par, dims, backend="torch")(batch, _sharded(lam, par, rank))
    assert_close(sq, ref_sq, rtol=1e-10, name=f"{family} tp |g_n|^2")
    assert_close(dot, ref_dot, rtol=1e-10, name=f"{family} tp <g_n, lambda>")
    meta = {
        "model": par.config.to_dict(),
        "padded_vocab_size": par.padded_vocab_size,
        "tp": 2,
        "make_vocab_size_divisible_by": 1,
    }
    opt = torch.optim.SGD(par.parameters(), lr=0.0)
    save_checkpoint(ckpt, 0, par, opt, dims, meta, {}, load_tokenizer(tokenizer_dir, require_eos=False))


def _tp_families_worker(rank, world, dirs, tokenizer_dir):
    from lqs_megatron.parallel.dims import init_distributed

    dims = init_distributed(tp=2, device="cpu")
    for family, (hf_dir, ckpt) in dirs.items():
        _check_family_tp2(rank, dims, family, hf_dir, ckpt, tokenizer_dir)


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_equals_one_process_and_exports(tmp_path, tiny_tokenizer, capsys):
    """tp=2 (2 gloo ranks): logits, losses, gradients and per-example statistics equal one process (biases
    split with their column-parallel layers, replicated after row-parallel ones); the tp=2 checkpoint then
    goes through `lqs export-hf` to a directory transformers loads with the original logits, its tokenizer
    (tokenizer.model included, a class transformers 4.x knows) and generation_config.json."""
    import transformers

    from lqs_megatron.cli import main

    hf_models, dirs = {}, {}
    for family in FAMILIES:
        hf_models[family] = save_family(family, tmp_path / family / "hf", vocab=521)  # padded to 522 for tp=2
        dirs[family] = (str(tmp_path / family / "hf"), str(tmp_path / family / "ckpt"))
    spawn(_tp_families_worker, 2, dirs, tiny_tokenizer)
    ids, mask = padded_batch(521)
    for family, (_, ckpt) in dirs.items():
        out = tmp_path / family / "export"
        assert main(["export-hf", "--checkpoint", ckpt, "--out", str(out)]) == 0
        back = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
        assert type(back) is type(hf_models[family]) and back.config.vocab_size == 521
        with torch.no_grad():
            ref = hf_models[family](input_ids=ids, attention_mask=mask).logits
            got = back(input_ids=ids, attention_mask=mask).logits
        assert rel_err(got[mask.bool()], ref[mask.bool()]) < 1e-6, family
        assert (out / "tokenizer.model").is_file() and (out / "generation_config.json").is_file()
        assert not json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"].endswith("Backend")
        want = transformers.AutoTokenizer.from_pretrained(tiny_tokenizer)("hello world").input_ids
        assert transformers.PreTrainedTokenizerFast.from_pretrained(str(out))("hello world").input_ids == want
        if family != "qwen25":  # transformers 5 maps model_type qwen2 to Qwen2Tokenizer whatever the files say
            assert transformers.AutoTokenizer.from_pretrained(str(out))("hello world").input_ids == want
        assert transformers.GenerationConfig.from_pretrained(str(out)).eos_token_id == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrain_init_from_starts_at_the_models_loss(tmp_path, family, capsys):
    """`lqs pretrain --init-from` on each family: the first step's loss is transformers' loss of that batch,
    and the trained checkpoint exports to a directory transformers loads with our logits."""
    import transformers

    from lqs_megatron.cli import main
    from lqs_megatron.training.data import SampleStream

    hf = save_family(family, tmp_path / "hf")
    rng = np.random.default_rng(1)
    _write(tmp_path / "train", [rng.integers(3, VOCAB, rng.integers(5, 30)) for _ in range(20)])
    args = ["--data", str(tmp_path / "train"), "--max-length", "16", "--global-batch-size", "4", "--lr", "1e-2"]
    args += ["--steps", "2", "--out", str(tmp_path / "ckpt"), "--device", "cpu", "--log-interval", "1"]
    assert main(["pretrain", "--init-from", str(tmp_path / "hf"), *args]) == 0
    batch = SampleStream([str(tmp_path / "train")], 16, 4).batch(range(4))
    with torch.no_grad():
        ref = F.cross_entropy(hf(input_ids=batch[:, :-1]).logits.transpose(1, 2), batch[:, 1:]).item()
    first = [json.loads(x) for x in open(tmp_path / "ckpt" / "metrics.jsonl") if '"loss"' in x][0]["loss"]
    assert abs(first - ref) <= 1e-5 * ref
    assert main(["export-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    trained = load_model(tmp_path / "ckpt").eval()
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        got, want = back(input_ids=ids, attention_mask=mask).logits, trained.logits(trained(ids))
        moved = hf(input_ids=ids, attention_mask=mask).logits
    assert rel_err(got[mask.bool()], want[mask.bool()]) < 1e-5
    assert rel_err(got[mask.bool()], moved[mask.bool()]) > 1e-4  # two steps did train it


def test_model_config_keeps_to_what_each_family_computes():
    """A config is exportable as its family or refused (named configs / YAML for pretraining from scratch)."""
    from lqs_megatron.models.config import ModelConfig
    from lqs_megatron.models.decoder import Decoder

    small = dict(vocab_size=10, hidden_size=16, num_heads=2)
    for kw in (
        dict(architecture="qwen2", qkv_bias=True),
        dict(architecture="llama", qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True),
    ):
        cfg = ModelConfig(**small, **kw)
        assert cfg.num_parameters() == sum(p.numel() for p in Decoder(cfg).parameters())
    bad = [
        dict(architecture="qwen2"),  # Qwen2 always has q/k/v biases
        dict(architecture="qwen2", qkv_bias=True, head_dim=4),
        dict(architecture="mistral", qkv_bias=True),
        dict(architecture="mistral", rope_scaling=dict(LLAMA3_ROPE)),
        dict(architecture="llama", qkv_bias=True),  # attention_bias: q/k/v and o together
        dict(architecture="llama", sliding_window=4),
    ]
    for kw in bad:
        with pytest.raises(LQSError, match="model config: architecture"):
            ModelConfig(**small, **kw)
    with pytest.raises(LQSError, match="rope scaling type 'yarn'"):
        ModelConfig(**small, architecture="llama", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    old = ModelConfig.from_dict({**small, "extra": {"sliding_window": 8, "note": 1}})  # written before the field
    assert old.sliding_window == 8 and old.extra == {"note": 1}
    assert ModelConfig.from_dict(old.to_dict()) == old
