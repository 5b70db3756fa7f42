#!/usr/bin/env python3
"""get_checkpoints: check the local Hugging Face directories the pipeline starts from.

The original `get_checkpoints_lqs.py` downloads the annotation model (Mistral 160M) and the
scorer's base (fairseq-dense-125M) from the hub. Nothing is downloaded here: copy those
directories to local disk (e.g. `huggingface-cli download ... --local-dir DIR` on a machine
with access), then run this to check each one loads offline: its config, its tokenizer and
its weights. Exits 1 naming the first problem.

    tools/get_checkpoints.py checkpoints/BSL-160M checkpoints/fairseq-dense-125M
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def check(path: str) -> str:
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.models.hf import config_from_hf, load_hf_model, read_hf_config

    hf = read_hf_config(path)
    tok = load_tokenizer(path)
    if hf.get("model_type") in ("mistral", "llama"):
        cfg = config_from_hf(hf, where=f"{path}/config.json")
        model = load_hf_model(path)
        n = sum(p.numel() for p in model.parameters())
        kind = f"{cfg.architecture} decoder (annotation model or scorer base)"
    else:  # another causal LM: usable as a scorer backbone through transformers
        from transformers import AutoModelForCausalLM

        n = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).num_parameters()
        kind = f"{hf.get('model_type')} via transformers (scorer base only)"
    return json.dumps({"path": path, "kind": kind, "parameters": n, "vocab": len(tok), "eos": tok.eos_token_id})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="HF_DIR", help="local Hugging Face model directories")
    args = parser.parse_args()
    from lqs_megatron.errors import LQSError

    for d in args.dirs:
        try:
            print(check(d))
        except LQSError as e:
            print(f"get_checkpoints: error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
