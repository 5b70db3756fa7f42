"""`lqs` subcommands of the datasets area: sample-proxy, merge, export-jsonl.

See lqs_megatron/cli/__init__.py for the conventions; the work is done by
:mod:`lqs_megatron.data.proxy`, :mod:`lqs_megatron.data.merge` and
:mod:`lqs_megatron.data.export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time


class FMT(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "sample-proxy",
        help="seeded uniform sample of N sequences (the LQS proxy set)",
        description="Draw N distinct sequences uniformly at random (seeded) from an indexed dataset and write "
        "them, in corpus order, as a new dataset (each sequence its own document), plus OUT.indices.npy "
        "(int64, ascending): the corpus index of each output sequence.",
        formatter_class=FMT,
    )
    p.add_argument("--data", required=True, metavar="PREFIX", help="input indexed dataset (PREFIX.bin/.idx)")
    p.add_argument(
        "--num", required=True, type=int, metavar="N", help="number of sequences to sample (<= dataset size)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output dataset prefix")
    p.set_defaults(func=_sample_proxy)

    p = sub.add_parser(
        "merge",
        help="merge indexed datasets, or join the shards of a sharded run",
        description="--data P1 P2 ... --out P: concatenate indexed datasets in the order given, keeping every "
        "document boundary (document indices are offset correctly; provenance sidecars joined). Datasets of "
        "different integer token dtypes are upcast to a common one. --shards OUT: join the outputs "
        "OUT.shard-IIIII-of-NNNNN of a sharded tokenize, retokenize, score or export-jsonl run into exactly what "
        "one run with --out OUT writes (docs/data.md, 'Sharded runs').",
        formatter_class=FMT,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="PREFIX", help="input dataset prefixes, in order")
    src.add_argument("--shards", metavar="OUT", help="the --out of a sharded run: join its shards into OUT")
    p.add_argument("--out", metavar="PREFIX", help="output dataset prefix (with --data)")
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --shards: wait up to this long for unfinished shards (other nodes still running), checking "
        "every 10 s",
    )
    p.set_defaults(func=_merge)

    p = sub.add_parser(
        "export-jsonl",
        help="decode a dataset (and its scores) to jsonl or parquet",
        description='Write one row per sequence: {"index": i, "text": decoded text, "score": s} ("score" only '
        "with --scores), as jsonl lines or parquet columns. The trailing EOS of each sequence is removed and "
        "special tokens are skipped. The tokenizer must hold every id of the data and match the fingerprint "
        "PREFIX.stats.json records.",
        formatter_class=FMT,
    )
    p.add_argument("--data", required=True, metavar="PREFIX", help="input indexed dataset")
    p.add_argument("--tokenizer", required=True, metavar="TOKENIZER_DIR", help="local tokenizer directory")
    p.add_argument("--scores", metavar="SCORES", help="one finite score per sequence (optional; see lqs select)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.jsonl, or .parquet)")
    p.add_argument(
        "--format", choices=("jsonl", "parquet"), default=None, help="output format (default: from --out's extension)"
    )
    p.add_argument("--batch-size", type=int, default=1024, help="sequences decoded per batch")
    p.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="export sequences [I*n/N, (I+1)*n/N) only, to OUT.shard-IIIII-of-NNNNN.jsonl (global index); join "
        "with `lqs merge --shards OUT`. Default: from a Slurm job array / torchrun ranks; 'none': everything",
    )
    p.set_defaults(func=_export_jsonl)


def _sample_proxy(args: argparse.Namespace) -> int:
    from lqs_megatron.data.proxy import sample_proxy  # noqa: PLC0415
    from lqs_megatron.utils.lock import output_lock  # noqa: PLC0415

    with output_lock(args.out):
        print(json.dumps(sample_proxy(args.data, args.num, args.seed, args.out)))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from lqs_megatron.errors import LQSError  # noqa: PLC0415

    if args.shards is not None:
        from lqs_megatron.data.shard_merge import merge_shards  # noqa: PLC0415

        if args.out is not None and args.out.rstrip("/") != args.shards.rstrip("/"):
            raise LQSError("--shards OUT writes OUT itself; drop --out (or give the same path)")
        deadline = time.monotonic() + args.wait
        while True:
            try:
                print(json.dumps(merge_shards(args.shards)))
                return 0
            except LQSError as e:
                if "missing or unfinished" not in str(e) or time.monotonic() >= deadline:
                    raise
                logging.getLogger(__name__).info("%s; waiting", e)
                time.sleep(min(10.0, max(deadline - time.monotonic(), 0.1)))
    from lqs_megatron.data.merge import merge_datasets  # noqa: PLC0415
    from lqs_megatron.utils.lock import output_lock  # noqa: PLC0415

    if args.out is None:
        raise LQSError("--data needs --out PREFIX")
    with output_lock(args.out):
        print(json.dumps(merge_datasets(args.data, args.out)))
    return 0


def _export_jsonl(args: argparse.Namespace) -> int:
    from lqs_megatron.data.export import export_jsonl  # noqa: PLC0415
    from lqs_megatron.data.sharding import resolve_shard  # noqa: PLC0415

    info = export_jsonl(
        args.data, args.tokenizer, args.out, args.scores, args.batch_size, args.format, resolve_shard(args.shard)
    )
    print(json.dumps(info))
    return 0
