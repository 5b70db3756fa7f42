"""README.md's "Your own data and model" runs as written: its YAML (read from the README) over a small
parquet corpus with a ``source`` column and a small Qwen2 model directory of "the user's" (random weights,
with its tokenizer), ``lqs pipeline --config my_run.yaml``, to the closing summary with its paths.

Only sizes are shrunk (a test overlay: steps, batch, proxy and sequence lengths, one method) and the
health gate is let through (an untrained model's replay may warn; the verdict printed is checked
against annotate.json either way); every key the README sets is used as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.utils import REPO

pytestmark = pytest.mark.slow

MARKER = "<!-- own-data-config:"
SIZES = {
    "data": {"max_length": 65, "workers": 1},
    "proxy": {"num": 48},
    "annotate": {
        "methods": ["lqs"],
        "steps": 4,
        "batch_size": 4,
        "interval": 2,
        "max_length": 32,
        "allow_unhealthy": True,
    },
    "scorer": {"epochs": 1, "batch_size": 8, "warmup": 2, "valid_num": 8, "lr": 5e-4, "max_length": 64},
    "pretrain": {"steps": 12, "global_batch_size": 8, "max_length": 32},
    "evaluate": {"max_length": 64},
}


def readme_config() -> tuple[str, dict]:
    """The YAML block after the README's own-data marker, and the command block after it."""
    text = open(os.path.join(REPO, "README.md")).read()
    after = text[text.index(MARKER) :]
    blocks = re.findall(r"```(\w+)\n(.*?)```", after, re.S)
    (lang, config), (lang2, command) = blocks[0], blocks[1]
    assert lang == "yaml" and lang2 == "bash"
    return command.strip(), yaml.safe_load(config)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _user_files(root, tiny_tokenizer, rng) -> list[str]:
    """corpus/*.parquet (text, source), target.jsonl and my_model/ (a Qwen2 directory with its tokenizer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer
    from lqs_megatron.demo.corpus import build_demo_corpus
    from tests.models.families import family_config

    demo = build_demo_corpus(root / "demo")["paths"]
    docs = [json.loads(ln)["text"] for ln in open(demo["corpus"])][:300]
    sources = ["manual", "forum", "spam"]
    src = rng.choice(sources, size=len(docs), p=[0.5, 0.3, 0.2])
    words = [t.split() for t in docs]
    texts = [" ".join(rng.permutation(w)) if s == "spam" else t for t, w, s in zip(docs, words, src)]
    (root / "corpus").mkdir()
    half = len(texts) // 2
    for k, sl in enumerate((slice(0, half), slice(half, None))):
        table = pa.table({"text": texts[sl], "source": [str(s) for s in src[sl]]})
        pq.write_table(table, root / "corpus" / f"part-{k}.parquet")
    with open(demo["target"]) as f:
        (root / "target.jsonl").write_text("".join(f.readlines()[:24]))
    model = root / "my_model"
    shutil.copytree(tiny_tokenizer, model)
    tok = load_tokenizer(str(model))
    cfg = family_config(
        "qwen25",
        vocab=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(int(rng.integers(1 << 30)))
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(model)
    return [str(s) for s in src]


def test_readme_own_data_section_runs_to_the_summary(tmp_path, tiny_tokenizer):
    import transformers

    rng = np.random.default_rng()
    src = _user_files(tmp_path, tiny_tokenizer, rng)
    command, config = readme_config()
    assert command == "lqs pipeline --config my_run.yaml"
    (tmp_path / "my_run.yaml").write_text(yaml.safe_dump(_merge(config, SIZES)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "lqs_megatron", *command.split()[1:]]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    work = tmp_path / "runs" / "my_run"

    # progress relayed while the steps ran: done/total, a rate, an ETA; no rate reads 0.0
    relayed = [ln for ln in out.splitlines() if re.match(r"\[\s*\d+/\d+\] \S+  .*, ETA \d+:\d\d", ln)]
    assert any("pretrain-lqs" in ln for ln in relayed), out
    assert not re.search(r"\b0\.0 ?(/s|\w+/s)", out), out

    # the summary: the verdict and lr of annotate.json, kept shares per source, the paths, each one real
    rec = json.loads((work / "annotate" / "lqs" / "annotate.json").read_text())
    line = next(ln for ln in out.splitlines() if re.match(r"\s+lqs\s+health ", ln))
    verdict = "health ok" if rec["health"]["ok"] else "health WARNING: " + rec["health"]["warnings"][0]["kind"]
    assert verdict in line and f"learning rate {rec['arguments']['lr']:g} (chosen by --lr auto)" in line
    head = out.splitlines().index("Kept share by source (selected / documents of the source):")
    rows = {r.split()[0]: r.split() for r in out.splitlines()[head + 2 : head + 5]}
    assert set(rows) == {"manual", "forum", "spam"}
    kept = set(np.load(work / "curated" / "lqs" / "selected.indices.npy").tolist())
    for name, row in rows.items():
        mine = [i for i, s in enumerate(src) if s == name]
        assert int(row[1]) == len(mine)
        assert float(row[2].rstrip("%")) == pytest.approx(100 * np.mean([i in kept for i in mine]), abs=0.051)
    for arm in ("lqs", "random"):
        hf = work / "final" / arm / "hf"
        assert f"model (Hugging Face) {hf}" in out
        model = transformers.AutoModelForCausalLM.from_pretrained(hf)
        assert type(model).__name__ == "Qwen2ForCausalLM"  # the arms: the user's architecture
    assert f"selection {work / 'curated' / 'lqs' / 'selected'}" in out
    reports = re.findall(r"report (\S+)", out)
    assert reports and all(os.path.isfile(p) for p in reports)
    assert any(p.endswith(".png") for p in reports)
    assert f"results {work / 'results.json'}" in out
