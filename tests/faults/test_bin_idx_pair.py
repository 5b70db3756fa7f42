"""A `.bin` longer than its `.idx` describes (issue 24, serious 4): a copy or rsync interrupted between the two
files. Every reader refuses it with one line naming both files and both sizes, before any output is written."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from lqs_megatron.cli import main
from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from lqs_megatron.errors import LQSError


def _dataset(prefix, rng) -> int:
    with IndexedDatasetWriter(str(prefix), np.uint16) as w:
        for _ in range(30):
            w.add_document(rng.integers(4, 512, int(rng.integers(5, 40))))
    return os.path.getsize(f"{prefix}.bin")


def _grow(prefix, rng, extra: int) -> None:
    """Another dataset's tokens appended: what a .bin from a newer copy beside an older .idx looks like."""
    with open(f"{prefix}.bin", "ab") as f:
        f.write(rng.integers(4, 512, extra).astype(np.uint16).tobytes())


@pytest.mark.parametrize("extra", [1, 37])
def test_reader_refuses_a_longer_bin_naming_both_files(tmp_path, extra):
    rng = np.random.default_rng(extra)
    size = _dataset(tmp_path / "d", rng)
    assert len(IndexedDataset(tmp_path / "d")) == 30  # the exact pair reads
    _grow(tmp_path / "d", rng, extra)
    with pytest.raises(LQSError) as e:
        IndexedDataset(tmp_path / "d")
    msg = str(e.value)
    assert f"{tmp_path / 'd'}.bin: data file longer than its index ({size + 2 * extra} bytes, " in msg
    assert f"{tmp_path / 'd'}.idx describes exactly {size})" in msg and "interrupted" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    """A tiny decoder as an HF directory (for evaluate) and a tiny scorer (for score), both with 512 ids."""
    from lqs_megatron.models.config import ModelConfig
    from lqs_megatron.models.decoder import Decoder
    from lqs_megatron.models.hf import save_hf_model
    from lqs_megatron.scorer.model import build_scorer, save_scorer

    d = tmp_path_factory.mktemp("models")
    cfg = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2)
    lm = Decoder(cfg)
    lm.init_weights(seed=5)
    save_hf_model(lm.state_dict(), cfg, d / "lm", tokenizer_dir=tiny_tokenizer)
    scorer, scfg, tok = build_scorer(model_config="tiny", tokenizer=tiny_tokenizer, max_length=32, seed=3)
    (d / "scorer").mkdir()
    save_scorer(scorer, scfg, tok, d / "scorer")
    return d


COMMANDS = {
    "sample-proxy": lambda d, m, tok, out: ["sample-proxy", "--data", d, "--num", "5", "--out", out],
    "export-jsonl": lambda d, m, tok, out: ["export-jsonl", "--data", d, "--tokenizer", tok, "--out", f"{out}.jsonl"],
    "evaluate": lambda d, m, tok, out: ["evaluate", "--model", m / "lm", "--data", d, "--max-length", "16"],
    "score": lambda d, m, tok, out: ["score", "--scorer", m / "scorer", "--data", d, "--out", out],
}


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_commands_refuse_a_spliced_pair(tmp_path, models, tiny_tokenizer, cmd, capsys):
    rng = np.random.default_rng(len(cmd))
    prefix = tmp_path / "d"
    size = _dataset(prefix, rng)
    args = [str(a) for a in COMMANDS[cmd](prefix, models, tiny_tokenizer, tmp_path / "out")]
    assert main(args) == 0, cmd  # the exact pair is fine
    for p in tmp_path.glob("out*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    capsys.readouterr()
    _grow(prefix, rng, 100)
    assert main(args) == 1, cmd
    out, err = capsys.readouterr()
    assert err.startswith(f"lqs {cmd}: error: {prefix}.bin: data file longer than its index"), err
    assert f"{prefix}.idx describes exactly {size})" in err and "Traceback" not in err and not out.strip()
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]  # nothing written
