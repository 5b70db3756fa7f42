"""`lqs` subcommands of the scorer area: prepare-scorer-data, train-scorer, score.

See lqs_megatron/cli/__init__.py for the conventions; the work is done by
:mod:`lqs_megatron.scorer.data`, :mod:`lqs_megatron.scorer.train` and
:mod:`lqs_megatron.scorer.infer`. ``train-scorer`` and ``score`` run under torchrun
(data parallel); ``scripts/scorer/{train,infer}.sh`` launch them on one or several nodes.
"""

from __future__ import annotations

import argparse
import json

FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "prepare-scorer-data",
        help="normalise proxy scores and split them into the scorer's train/valid data",
        description="Normalise the proxy scores (z-score with the population std, clipped to +-3; always applied), "
        "retokenize the proxy sequences for the scorer when --src-tokenizer and --dst-tokenizer differ, split them "
        "(seeded) into train and valid, and write OUT/{train,valid}.bin/.idx, OUT/{train,valid}_scores.npy, "
        "OUT/scores.png and OUT/stats.json. The directory appears only when complete.",
        formatter_class=FMT,
    )
    p.add_argument("--proxy", required=True, metavar="PREFIX", help="proxy indexed dataset (the annotated sequences)")
    p.add_argument("--scores", required=True, metavar="FILE.npy", help="one score per proxy sequence (proxy order)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--valid-num", type=int, default=None, metavar="M", help="validation sequences (default: 10%% of N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/valid split")
    p.add_argument("--src-tokenizer", metavar="TOKENIZER_DIR", help="tokenizer of the proxy data")
    p.add_argument("--dst-tokenizer", metavar="TOKENIZER_DIR", help="tokenizer of the scorer")
    p.add_argument("--workers", type=int, default=None, help="retokenization processes (default: one per core)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "train-scorer",
        help="train the data scorer (backbone + mean pooling + linear head, MSE) on prepared data",
        description="Fine-tune a decoder backbone with a linear head on the normalised scores: AdamW, warmup + "
        "cosine, gradient clipping, data parallel under torchrun, bf16 autocast on GPU. Validates every epoch (MSE, "
        "Pearson, Spearman) and keeps the best epoch by validation Pearson in OUT/best (what `lqs score` reads) and "
        "the latest state in OUT/last (for --resume).",
        formatter_class=FMT,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", metavar="HF_DIR", help="local HF causal-LM directory (Mistral/Llama: fast path)")
    src.add_argument(
        "--model-config", metavar="NAME", help="named model config or YAML (random init; needs --tokenizer)"
    )
    p.add_argument("--tokenizer", metavar="TOKENIZER_DIR", help="tokenizer (default with --base: the base's own)")
    p.add_argument("--data", required=True, metavar="DIR", help="directory written by `lqs prepare-scorer-data`")
    p.add_argument("--out", required=True, metavar="CKPT_DIR", help="output checkpoint directory")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training split")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps")
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clipping (0 = off)")
    p.add_argument("--batch-size", type=int, default=512, help="global batch size (sequences per optimizer step)")
    p.add_argument(
        "--micro-batch-size",
        type=int,
        help="sequences per rank per forward/backward (default: the largest divisor of batch-size / ranks up to 16)",
    )
    p.add_argument(
        "--eval-batch-tokens",
        type=int,
        default=None,
        help="token budget of a validation batch (default: 4096 on the CPU, 32768 on CUDA)",
    )
    p.add_argument("--max-length", type=int, default=1024, help="tokens read per sequence (BOS included)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the tokenizer's BOS to each sequence")
    p.add_argument("--seed", type=int, default=0, help="seed of the head init, random backbone init and data order")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "score",
        help="score every sequence of an indexed dataset with a trained scorer",
        description="Write OUT/scores.npy (float32, one score per sequence, dataset order). Length-bucketed "
        "batches under a token budget, data parallel under torchrun, output in shards OUT/shards/shard-XXXXX.npy "
        "written atomically; rerunning the same command after an interruption computes only the missing shards.",
        formatter_class=FMT,
    )
    p.add_argument("--scorer", required=True, metavar="CKPT_DIR", help="train-scorer output (or its best/ dir)")
    p.add_argument("--data", required=True, metavar="PREFIX", help="indexed dataset to score")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--tokenizer", metavar="TOKENIZER_DIR", help="the data's tokenizer, checked against the scorer's")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="token budget of a batch, rows x longest row (default: 4096 on the CPU, 32768 on CUDA)",
    )
    p.add_argument("--max-batch-size", type=int, default=512, help="most sequences in a batch")
    p.add_argument("--shard-size", type=int, default=100_000, help="sequences per output shard (unit of restart)")
    p.add_argument("--compile", action="store_true", help="torch.compile the scorer (CUDA)")
    p.add_argument("--no-bf16", action="store_true", help="run in float32 on CUDA (default: bf16 backbone)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--parquet",
        action="store_true",
        help="also write OUT/scores.parquet: index, document, score and the dataset's PREFIX.meta.jsonl fields",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="score sequences [I*n/N, (I+1)*n/N) only, into OUT.shard-IIIII-of-NNNNN; join with `lqs merge "
        "--shards OUT`. Default: from a Slurm job array (torchrun ranks stay data parallel within a shard); "
        "'none': everything",
    )
    p.set_defaults(func=_score)


def _prepare(args: argparse.Namespace) -> int:
    from lqs_megatron.scorer.data import prepare_scorer_data  # noqa: PLC0415

    stats = prepare_scorer_data(
        args.proxy,
        args.scores,
        args.out,
        valid_num=args.valid_num,
        seed=args.seed,
        src_tokenizer=args.src_tokenizer,
        dst_tokenizer=args.dst_tokenizer,
        args={k: v for k, v in vars(args).items() if k != "func"},
        workers=args.workers,
    )
    print(json.dumps({k: stats[k] for k in ("num_train", "num_valid", "raw_mean", "raw_std", "clipped")}))
    return 0


def _train(args: argparse.Namespace) -> int:
    from lqs_megatron.distributed import init_distributed  # noqa: PLC0415
    from lqs_megatron.scorer.train import TrainScorerConfig, train_scorer  # noqa: PLC0415

    cfg = TrainScorerConfig(
        epochs=args.epochs,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        clip_grad=args.clip_grad,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        eval_batch_tokens=args.eval_batch_tokens,
        max_length=args.max_length,
        use_bos=not args.no_bos,
        seed=args.seed,
        bf16=not args.no_bf16,
    )
    dims = init_distributed(device=args.device)
    try:
        result = train_scorer(
            args.data,
            args.out,
            cfg,
            base=args.base,
            model_config=args.model_config,
            tokenizer=args.tokenizer,
            resume=args.resume,
            dims=dims,
        )
    finally:
        dims.close()
    if dims.is_main:
        print(json.dumps(result))
    return 0


def _score(args: argparse.Namespace) -> int:
    from lqs_megatron.data.sharding import resolve_shard  # noqa: PLC0415
    from lqs_megatron.distributed import init_distributed  # noqa: PLC0415
    from lqs_megatron.scorer.infer import ScoreOptions, score_dataset  # noqa: PLC0415

    opts = ScoreOptions(
        max_tokens=args.max_tokens,
        max_batch_size=args.max_batch_size,
        shard_size=args.shard_size,
        bf16=not args.no_bf16,
        compile=args.compile,
        parquet=args.parquet,
    )
    shard = resolve_shard(args.shard, torch_ranks=False)  # under torchrun the ranks share one output
    dims = init_distributed(device=args.device)
    try:
        stats = score_dataset(args.scorer, args.data, args.out, args.tokenizer, opts, dims, not args.no_progress, shard)
    finally:
        dims.close()
    if dims.is_main:
        keys = ("num_sequences", "shards_computed", "shards_skipped", "sequences_per_s", "tokens_per_s")
        print(json.dumps({k: stats[k] for k in keys}))
    return 0
