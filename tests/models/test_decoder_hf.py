"""Our decoder against transformers: logits on random inputs with right padding, and the
HF round trip (save ours as HF, load with transformers, same logits)."""

import pytest
import torch

from lqs_megatron.models.config import ModelConfig
from lqs_megatron.models.decoder import Decoder
from lqs_megatron.models.hf import load_hf_model, save_hf_model
from tests.utils import assert_close, rel_err


def _hf_model(arch: str, tie: bool = False):
    import transformers

    kw = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    cfg = transformers.MistralConfig(**kw) if arch == "mistral" else transformers.LlamaConfig(**kw)
    model = (transformers.MistralForCausalLM if arch == "mistral" else transformers.LlamaForCausalLM)(cfg)
    with torch.no_grad():  # random norms too, so a mixed-up norm weight cannot pass
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model.eval()


def _padded_batch(vocab: int):
    lengths = [13, 7, 1, 10]
    ids = torch.randint(0, vocab, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids * mask, mask  # right padding with id 0


@pytest.mark.parametrize("arch,tie", [("mistral", False), ("llama", False), ("mistral", True)])
def test_logits_match_transformers(tmp_path, arch, tie):
    hf = _hf_model(arch, tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf").eval()
    assert ours.config.architecture == arch and ours.config.tie_word_embeddings == tie
    ids, mask = _padded_batch(97)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ours(ids))
    real = mask.bool()
    assert rel_err(got[real], ref[real]) < 1e-5
    assert_close(got[real], ref[real], rtol=1e-4, atol=1e-5, name="logits")


def test_padded_vocab_round_trip(tmp_path):
    """Import with padding rows (as tensor parallelism needs), export, reload with transformers."""
    import transformers

    hf = _hf_model("mistral")
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf", padded_vocab_size=128)
    assert ours.tok_embeddings.weight.shape[0] == 128 and ours.padded_vocab_size == 128
    save_hf_model(ours.state_dict(), ours.config, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.vocab_size == 97
    ids, mask = _padded_batch(97)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = back(input_ids=ids, attention_mask=mask).logits
    assert rel_err(got[mask.bool()], ref[mask.bool()]) < 1e-6


def test_random_init_is_seeded_and_exports(tmp_path):
    import transformers

    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    a, b = Decoder(cfg), Decoder(cfg)
    a.init_weights(seed=3)
    b.init_weights(seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert cfg.num_parameters() == sum(p.numel() for p in a.parameters())
    save_hf_model(a.state_dict(), cfg, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert rel_err(a.logits(a(ids)), hf(input_ids=ids).logits) < 1e-5


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    import json

    from lqs_megatron.errors import LQSError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(LQSError, match="unsupported architecture"):
        load_hf_model(tmp_path / "m")
    with pytest.raises(LQSError, match="does not exist"):
        load_hf_model(tmp_path / "missing")
