"""Settings of the data commands that have no configuration object of their own in the library:
``train-tokenizer``, ``sample-proxy``, ``merge``, ``export-jsonl``, ``materialize``. (``tokenize``, ``tokenize-target``
and ``retokenize`` are :class:`~lqs_megatron.data.preprocess.tokenize.TokenizeConfig`,
:class:`~lqs_megatron.data.preprocess.conversations.TargetConfig` and
:class:`~lqs_megatron.data.preprocess.retokenize.RetokenizeConfig`.) See :mod:`lqs_megatron.options`.

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from lqs_megatron.data.preprocess.jsonl import ON_ERROR
from lqs_megatron.options import check_seed, option


@dataclass
class TrainTokenizerConfig:
    """Settings of ``lqs train-tokenizer``."""

    inputs: list[str] = option(flag="--input", metavar="FILE")
    """Files, directories or glob patterns (quote them), read in the order given: jsonl (plain, .gz, .zst, .xz,
    .bz2), parquet, arrow IPC files/streams, datasets.save_to_disk directories, recognised by their content."""
    vocab_size: int = option()
    """Number of pieces, special ones included."""
    out: str = option(metavar="TOKENIZER_DIR")
    """Output directory (replaced atomically, only when absent, empty or an earlier output of this command:
    docs/design.md, "Outputs")."""
    field: str = "text"
    """The JSON field (parquet/arrow: the column) holding the text."""
    on_error: str = option("fail", choices=ON_ERROR)
    """Bad input lines: fail, or skip and count them."""
    character_coverage: float | None = option(None, metavar="FRACTION")
    """Share of the characters (by count) that get a piece of their own, 0.98 to 1; the rarer ones are spelled
    as UTF-8 bytes (still lossless). Default: 1 where --vocab-size has room for every distinct character, else
    the largest share that fits (with a warning); a vocabulary too small for any is an error naming the
    smallest that works."""


@dataclass
class SampleProxyConfig:
    """Settings of ``lqs sample-proxy``."""

    data: str = option(metavar="PREFIX")
    """Input indexed dataset (PREFIX.bin/.idx, or a view)."""
    num: int = option(metavar="N")
    """Number of sequences to sample (at most the dataset's size)."""
    out: str = option(metavar="PREFIX")
    """Output dataset prefix."""
    seed: int = 0
    """Random seed."""

    def __post_init__(self) -> None:
        check_seed(self.seed)


@dataclass
class MaterializeConfig:
    """Settings of ``lqs materialize``."""

    data: str = option(metavar="PREFIX")
    """Input view (PREFIX.view.json, written by select/order --view)."""
    out: str = option(metavar="PREFIX")
    """Output dataset prefix: OUT.bin/.idx and the sidecars the view's command writes without --view."""


@dataclass
class MergeConfig:
    """Settings of ``lqs merge``."""

    data: list[str] | None = option(None, metavar="PREFIX", one_of="source")
    """Input dataset prefixes, concatenated in order (with --out); or --shards."""
    shards: str | None = option(None, metavar="OUT", one_of="source")
    """The --out of a sharded run: join its shards OUT.shard-IIIII-of-NNNNN into OUT; or --data."""
    out: str | None = option(None, metavar="PREFIX")
    """Output dataset prefix (with --data)."""
    wait: float = option(0.0, metavar="SECONDS")
    """With --shards: wait up to this long for unfinished shards (other nodes still running), checking every
    10 s."""
    allow_tokenizer_mismatch: bool = False
    """Merge datasets whose recorded tokenizers differ anyway (a warning; the output records a "mixed"
    tokenizer, which no model matches)."""


@dataclass
class ExportJsonlConfig:
    """Settings of ``lqs export-jsonl``."""

    data: str = option(metavar="PREFIX")
    """Input indexed dataset."""
    tokenizer: str = option()
    """Local tokenizer directory (the one the data was made with)."""
    out: str = option(metavar="FILE")
    """Output file (.jsonl, or .parquet)."""
    scores: str | None = option(None, metavar="SCORES")
    """One finite score per sequence (optional; a .npy, a score directory, a parquet score column: see lqs
    select)."""
    format: str | None = option(None, choices=("jsonl", "parquet"))
    """Output format (default: from --out's extension)."""
    batch_size: int = 1024
    """Sequences decoded per batch (one process)."""
    shard: str | None = option(None, metavar="I/N")
    """Export sequences [I*n/N, (I+1)*n/N) only, to OUT.shard-IIIII-of-NNNNN.jsonl (global index); join with
    `lqs merge --shards OUT`. Default: from a Slurm job array / torchrun ranks; 'none': everything."""
