"""Exports read alike by transformers 4.x (the floor in pyproject.toml) and 5.x.

In one interpreter: an export's config.json is read back by the installed transformers as the model
it was written from (every family), its tokenizer class is one 4.x knows, and a 5.x-style config
(only ``rope_parameters``) and a 4.x-style one (``rope_theta`` + ``rope_scaling``) load the same.

Across versions (``LQS_OTHER_PYTHON``: an interpreter with another transformers and this checkout
installed; the CI's floor job points it at the main venv): every family exported here is loaded
there with the same logits and token ids, and exported there, loaded here.
"""

import json
import os
import subprocess

import pytest
import torch

from lqs_megatron.models.hf import load_hf_model, save_hf_model
from tests.models.families import FAMILIES, padded_batch, save_family
from tests.utils import REPO, rel_err

OTHER = os.environ.get("LQS_OTHER_PYTHON")
TEXT = "The quick brown fox, 3 times: déjà vu."

_OTHER_SCRIPT = """
import json, sys, torch, transformers
from lqs_megatron.models.hf import load_hf_model, save_hf_model
task, root, families, tok = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
out = {"version": transformers.__version__}
for fam in families:
    if task == "export":
        m = load_hf_model(f"{root}/{fam}/hf")
        save_hf_model(m.state_dict(), m.config, f"{root}/{fam}/there", tokenizer_dir=tok)
    else:
        d = f"{root}/{fam}/here"
        ids, mask = torch.load(f"{root}/batch.pt")
        lm = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
        with torch.no_grad():
            logits = lm(input_ids=ids, attention_mask=mask).logits
        t = transformers.PreTrainedTokenizerFast.from_pretrained(d)
        out[fam] = {"logits": logits, "ids": t(sys.argv[5]).input_ids, "class": type(lm).__name__}
torch.save(out, f"{root}/{task}.pt")
"""


def _run_other(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([OTHER, "-c", _OTHER_SCRIPT, *args], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(f"{args[1]}/{args[0]}.pt", weights_only=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_config_reads_back_as_the_same_model(tmp_path, family, tiny_tokenizer):
    import transformers

    hf = save_family(family, tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    save_hf_model(ours.state_dict(), ours.config, tmp_path / "out", tokenizer_dir=tiny_tokenizer)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == cfg["rope_theta"] == ours.config.rope_theta
    back = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    mine = hf.config.to_dict()
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "sliding_window", "attention_bias", "mlp_bias"):
        if key in mine:
            assert getattr(back, key) == mine[key], key
    tok_cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == open(f"{tiny_tokenizer}/tokenizer.model", "rb").read()
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)


def test_several_eos_ids_survive_the_export(tmp_path):
    """Llama-3.x instruct models list several EOS ids: the first ends documents, all are exported."""
    import transformers

    save_family("llama32", tmp_path / "hf", eos_token_id=[2, 5, 7])
    ours = load_hf_model(tmp_path / "hf")
    assert ours.config.eos_token_id == 2
    save_hf_model(ours.state_dict(), ours.config, tmp_path / "out")
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "out")).eos_token_id == [2, 5, 7]
    assert transformers.GenerationConfig.from_pretrained(str(tmp_path / "out")).eos_token_id == [2, 5, 7]


@pytest.mark.slow
@pytest.mark.skipif(not OTHER, reason="LQS_OTHER_PYTHON (an interpreter with another transformers) is not set")
def test_exports_load_across_transformers_versions(tmp_path, tiny_tokenizer):
    import transformers

    ids, mask = padded_batch(97)
    torch.save((ids, mask), tmp_path / "batch.pt")
    want_ids = transformers.PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer)(TEXT).input_ids
    ref = {}
    for fam in FAMILIES:
        hf = save_family(fam, tmp_path / fam / "hf")
        with torch.no_grad():
            ref[fam] = hf(input_ids=ids, attention_mask=mask).logits
        ours = load_hf_model(tmp_path / fam / "hf")
        save_hf_model(ours.state_dict(), ours.config, tmp_path / fam / "here", tokenizer_dir=tiny_tokenizer)
    # written here, loaded there
    there = _run_other("load", str(tmp_path), json.dumps(FAMILIES), tiny_tokenizer, TEXT)
    assert there["version"] != transformers.__version__
    real = mask.bool()
    for fam in FAMILIES:
        assert rel_err(there[fam]["logits"][real], ref[fam][real]) < 1e-6, (fam, there["version"])
        assert there[fam]["ids"] == want_ids, fam
    # written there (from the files transformers wrote here), loaded here
    _run_other("export", str(tmp_path), json.dumps(FAMILIES), tiny_tokenizer)
    for fam in FAMILIES:
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / fam / "there")).eval()
        with torch.no_grad():
            got = back(input_ids=ids, attention_mask=mask).logits
        assert rel_err(got[real], ref[fam][real]) < 1e-6, fam
        tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / fam / "there"))
        if fam != "qwen25":  # transformers 5 builds Qwen2Tokenizer for model_type qwen2 whatever the files say
            assert tok(TEXT).input_ids == want_ids, fam
