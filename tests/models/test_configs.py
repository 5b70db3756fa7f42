"""Every shipped model config parses, and the paper sizes have the parameter counts docs/training.md states."""

import pytest

from lqs_megatron.models.config import available_model_configs, load_model_config
from lqs_megatron.models.parallelize import check_tp

# with a 32000-token vocabulary (the papers' Mistral tokenizer), untied embeddings
PAPER_SIZES = {"160M": 162_417_408, "470M": 468_239_360, "1B": 1_004_348_928, "1.7B": 1_741_785_088}


def test_all_configs_parse():
    names = available_model_configs()
    assert {"tiny", *PAPER_SIZES} <= set(names)
    for n in names:
        cfg = load_model_config(n, vocab_size=1000)
        assert cfg.num_parameters() > 0


@pytest.mark.parametrize("name,count", sorted(PAPER_SIZES.items()))
def test_paper_sizes(name, count):
    cfg = load_model_config(name, vocab_size=32000)
    assert cfg.num_parameters() == count
    assert cfg.architecture == "mistral" and cfg.num_kv_heads == cfg.num_heads and not cfg.tie_word_embeddings
    for tp in (1, 2, 4):  # every paper size splits over 1, 2 and 4 GPUs
        check_tp(cfg, tp)
