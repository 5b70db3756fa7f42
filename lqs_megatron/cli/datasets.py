"""`lqs` subcommands of the datasets area: sample-proxy, merge, export-jsonl.

See lqs_megatron/cli/__init__.py for the conventions; the work is done by
:mod:`lqs_megatron.data.proxy`, :mod:`lqs_megatron.data.merge` and
:mod:`lqs_megatron.data.export`.
"""

from __future__ import annotations

import argparse
import json

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``; the flags come from the dataclasses of data/config.py."""
    p = new_command(
        sub,
        "sample-proxy",
        help="seeded uniform sample of N sequences (the LQS proxy set)",
        description="Draw N distinct sequences uniformly at random (seeded) from an indexed dataset and write "
        "them, in corpus order, as a new dataset (each sequence its own document), plus OUT.indices.npy "
        "(int64, ascending): the corpus index of each output sequence.",
        setup=flags("lqs_megatron.data.config", "SampleProxyConfig"),
    )
    p.set_defaults(func=_sample_proxy)

    p = new_command(
        sub,
        "merge",
        help="merge several indexed datasets into one",
        description="Concatenate indexed datasets in the order given, keeping every document boundary (document "
        "indices are offset correctly). Datasets of different integer token dtypes are upcast to a common one.",
        setup=flags("lqs_megatron.data.config", "MergeConfig"),
    )
    p.set_defaults(func=_merge)

    p = new_command(
        sub,
        "export-jsonl",
        help="decode a dataset (and its scores) to jsonl",
        description='Write one line per sequence: {"index": i, "text": decoded text, "score": s} ("score" only '
        "with --scores). The trailing EOS of each sequence is removed and special tokens are skipped.",
        setup=flags("lqs_megatron.data.config", "ExportJsonlConfig"),
    )
    p.set_defaults(func=_export_jsonl)


def _sample_proxy(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import SampleProxyConfig
    from lqs_megatron.data.proxy import sample_proxy

    cfg = build(SampleProxyConfig, args)
    print(json.dumps(sample_proxy(cfg.data, cfg.num, cfg.seed, cfg.out)))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import MergeConfig
    from lqs_megatron.data.merge import merge_datasets

    cfg = build(MergeConfig, args)
    print(json.dumps(merge_datasets(cfg.data, cfg.out)))
    return 0


def _export_jsonl(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import ExportJsonlConfig
    from lqs_megatron.data.export import export_jsonl

    cfg = build(ExportJsonlConfig, args)
    print(json.dumps(export_jsonl(cfg.data, cfg.tokenizer, cfg.out, cfg.scores, batch_size=cfg.batch_size)))
    return 0
