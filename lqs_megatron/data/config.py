"""Settings of the data commands that have no configuration object of their own in the library:
``train-tokenizer``, ``sample-proxy``, ``merge``, ``export-jsonl``. (``tokenize``, ``tokenize-target``
and ``retokenize`` are :class:`~lqs_megatron.data.tokenize.TokenizeConfig`,
:class:`~lqs_megatron.data.conversations.TargetConfig` and
:class:`~lqs_megatron.data.retokenize.RetokenizeConfig`.) See :mod:`lqs_megatron.options`."""

from __future__ import annotations

from dataclasses import dataclass

from lqs_megatron.data.jsonl import ON_ERROR
from lqs_megatron.options import option


@dataclass
class TrainTokenizerConfig:
    """Settings of ``lqs train-tokenizer``."""

    inputs: list[str] = option(flag="--input", metavar="FILE")
    """jsonl files (plain, .gz or .zst) or glob patterns (quote them), read in the order given."""
    vocab_size: int = option()
    """Number of pieces, special ones included."""
    out: str = option(metavar="TOKENIZER_DIR")
    """Output directory (replaced atomically)."""
    field: str = "text"
    """The JSON field holding the text."""
    on_error: str = option("fail", choices=ON_ERROR)
    """Bad input lines: fail, or skip and count them."""


@dataclass
class SampleProxyConfig:
    """Settings of ``lqs sample-proxy``."""

    data: str = option(metavar="PREFIX")
    """Input indexed dataset (PREFIX.bin/.idx)."""
    num: int = option(metavar="N")
    """Number of sequences to sample (at most the dataset's size)."""
    out: str = option(metavar="PREFIX")
    """Output dataset prefix."""
    seed: int = 0
    """Random seed."""


@dataclass
class MergeConfig:
    """Settings of ``lqs merge``."""

    data: list[str] = option(metavar="PREFIX")
    """Input dataset prefixes, in order."""
    out: str = option(metavar="PREFIX")
    """Output dataset prefix."""


@dataclass
class ExportJsonlConfig:
    """Settings of ``lqs export-jsonl``."""

    data: str = option(metavar="PREFIX")
    """Input indexed dataset."""
    tokenizer: str = option()
    """Local tokenizer directory (the one the data was made with)."""
    out: str = option(metavar="FILE.jsonl")
    """Output jsonl file."""
    scores: str | None = option(None, metavar="FILE.npy")
    """One finite score per sequence (optional)."""
    batch_size: int = 1024
    """Sequences decoded per batch (one process)."""
