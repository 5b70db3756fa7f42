"""`lqs` subcommands of the datasets area: sample-proxy, merge, export-jsonl, materialize.

See lqs_megatron/cli/__init__.py for the conventions; the work is done by
:mod:`lqs_megatron.data.datasets.proxy`, :mod:`lqs_megatron.data.datasets.merge`,
:mod:`lqs_megatron.data.preprocess.export` and :mod:`lqs_megatron.data.datasets.view`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

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
        help="merge indexed datasets, or join the shards of a sharded run",
        description="--data P1 P2 ... --out P: concatenate indexed datasets in the order given, keeping every "
        "document boundary (document indices are offset correctly; provenance sidecars joined). Datasets of "
        "different integer token dtypes are upcast to a common one. --shards OUT: join the outputs "
        "OUT.shard-IIIII-of-NNNNN of a sharded tokenize, retokenize, score or export-jsonl run into exactly what "
        "one run with --out OUT writes (docs/data.md, 'Sharded runs').",
        setup=flags("lqs_megatron.data.config", "MergeConfig"),
    )
    p.set_defaults(func=_merge)

    p = new_command(
        sub,
        "export-jsonl",
        help="decode a dataset (and its scores) to jsonl or parquet",
        description='Write one row per sequence: {"index": i, "text": decoded text, "score": s} ("score" only '
        "with --scores), as jsonl lines or parquet columns. The trailing EOS of each sequence is removed and "
        "special tokens are skipped. The tokenizer must hold every id of the data and match the fingerprint "
        "PREFIX.stats.json records.",
        setup=flags("lqs_megatron.data.config", "ExportJsonlConfig"),
    )
    p.set_defaults(func=_export_jsonl)

    p = new_command(
        sub,
        "materialize",
        help="write a view (select/order --view) as an indexed dataset",
        description="Copy the sequences a view (PREFIX.view.json, from lqs select/order --view) names out of its "
        "source into OUT.bin/.idx, with OUT.indices.npy, OUT.scores.npy, OUT.stats.json (and OUT.meta.jsonl when "
        "the source has one): byte for byte what the view's command writes without --view. A view whose source "
        "changed is refused.",
        setup=flags("lqs_megatron.data.config", "MaterializeConfig"),
    )
    p.set_defaults(func=_materialize)


def _sample_proxy(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import SampleProxyConfig
    from lqs_megatron.data.datasets.proxy import sample_proxy
    from lqs_megatron.utils.lock import output_lock

    cfg = build(SampleProxyConfig, args)
    with output_lock(cfg.out, step="sample-proxy", inputs={"--data": cfg.data}):
        print(json.dumps(sample_proxy(cfg.data, cfg.num, cfg.seed, cfg.out)))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import MergeConfig
    from lqs_megatron.errors import LQSError

    cfg = build(MergeConfig, args)
    if cfg.shards is not None:
        from lqs_megatron.data.preprocess.shard_merge import merge_shards

        if cfg.out is not None and cfg.out.rstrip("/") != cfg.shards.rstrip("/"):
            raise LQSError("--shards OUT writes OUT itself; drop --out (or give the same path)")
        deadline = time.monotonic() + cfg.wait
        while True:
            try:
                print(json.dumps(merge_shards(cfg.shards)))
                return 0
            except LQSError as e:
                if "missing or unfinished" not in str(e) or time.monotonic() >= deadline:
                    raise
                logging.getLogger(__name__).info("%s; waiting", e)
                time.sleep(min(10.0, max(deadline - time.monotonic(), 0.1)))
    from lqs_megatron.data.datasets.merge import merge_datasets
    from lqs_megatron.utils.lock import output_lock

    if cfg.out is None:
        raise LQSError("--data needs --out PREFIX")
    with output_lock(cfg.out, step="merge", inputs={"--data": cfg.data}):
        print(json.dumps(merge_datasets(cfg.data, cfg.out, cfg.allow_tokenizer_mismatch)))
    return 0


def _export_jsonl(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import ExportJsonlConfig
    from lqs_megatron.data.preprocess.export import export_jsonl
    from lqs_megatron.data.preprocess.sharding import resolve_shard

    cfg = build(ExportJsonlConfig, args)
    shard = resolve_shard(cfg.shard)
    info = export_jsonl(cfg.data, cfg.tokenizer, cfg.out, cfg.scores, cfg.batch_size, cfg.format, shard)
    print(json.dumps(info))
    return 0


def _materialize(args: argparse.Namespace) -> int:
    from lqs_megatron.data.config import MaterializeConfig
    from lqs_megatron.data.datasets.view import materialize
    from lqs_megatron.utils.lock import output_lock

    cfg = build(MaterializeConfig, args)
    with output_lock(cfg.out, step="materialize", inputs={"--data": cfg.data}):
        print(json.dumps(materialize(cfg.data, cfg.out)))
    return 0
