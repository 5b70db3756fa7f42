"""`lqs` subcommands of the scorer area: prepare-scorer-data, train-scorer, score.

See lqs_megatron/cli/__init__.py for the conventions; the work is done by
:mod:`lqs_megatron.scorer.data`, :mod:`lqs_megatron.scorer.train` and
:mod:`lqs_megatron.scorer.infer`. ``train-scorer`` and ``score`` run under torchrun
(data parallel); ``scripts/scorer/{train,infer}.sh`` launch them on one or several nodes.
"""

from __future__ import annotations

import argparse
import json

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``; the flags come from the dataclasses of scorer/config.py."""
    p = new_command(
        sub,
        "prepare-scorer-data",
        help="normalise proxy scores and split them into the scorer's train/valid data",
        description="Normalise the proxy scores (z-score with the population std, clipped to +-3; always applied), "
        "retokenize the proxy sequences for the scorer when --src-tokenizer and --dst-tokenizer differ, split them "
        "(seeded) into train and valid, and write OUT/{train,valid}.bin/.idx, OUT/{train,valid}_scores.npy, "
        "OUT/scores.png and OUT/stats.json. The directory appears only when complete.",
        setup=flags("lqs_megatron.scorer.config", "PrepareScorerConfig"),
    )
    p.set_defaults(func=_prepare)

    p = new_command(
        sub,
        "train-scorer",
        help="train the data scorer (backbone + mean pooling + linear head, MSE) on prepared data",
        description="Fine-tune a decoder backbone with a linear head on the normalised scores: AdamW, warm-up + "
        "cosine, gradient clipping, data parallel under torchrun, bf16 autocast on GPU. Validates every epoch (MSE, "
        "Pearson, Spearman) and keeps the best epoch by validation Pearson in OUT/best (what `lqs score` reads) and "
        "checkpoints in OUT/step_X (for --resume; OUT/latest names the newest).",
        setup=flags("lqs_megatron.scorer.config", "TrainScorerRun", "TrainScorerConfig"),
    )
    p.set_defaults(func=_train)

    p = new_command(
        sub,
        "score",
        help="score every sequence of an indexed dataset with a trained scorer",
        description="Write OUT/scores.npy (float32, one score per sequence, dataset order). Length-bucketed "
        "batches under a token budget, data parallel under torchrun, output in parts OUT/parts/part-XXXXX.npy "
        "written atomically; rerunning the same command after an interruption computes only the missing parts.",
        setup=flags("lqs_megatron.scorer.config", "ScoreRun", "ScoreOptions"),
    )
    p.set_defaults(func=_score)


def _prepare(args: argparse.Namespace) -> int:
    from lqs_megatron.scorer.config import PrepareScorerConfig
    from lqs_megatron.scorer.data import prepare_scorer_data

    cfg = build(PrepareScorerConfig, args)
    stats = prepare_scorer_data(cfg, args={k: v for k, v in vars(args).items() if k != "func"})
    print(json.dumps({k: stats[k] for k in ("num_train", "num_valid", "raw_mean", "raw_std", "clipped")}))
    return 0


def _train(args: argparse.Namespace) -> int:
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.scorer.config import TrainScorerConfig, TrainScorerRun
    from lqs_megatron.scorer.train import train_scorer

    run, cfg = build(TrainScorerRun, args), build(TrainScorerConfig, args)
    if cfg.wandb:
        from lqs_megatron.utils.progress import require_wandb

        require_wandb()
    dims = init_distributed(device=run.device)
    try:
        result = train_scorer(run, cfg, dims)
    finally:
        dims.close()
    if dims.is_main:
        print(json.dumps(result))
    return 0


def _score(args: argparse.Namespace) -> int:
    from lqs_megatron.data.preprocess.sharding import resolve_shard
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.scorer.config import ScoreOptions, ScoreRun
    from lqs_megatron.scorer.infer import score_dataset

    # under torchrun the ranks share one output: only --shard or a Slurm job array picks a shard
    run = build(ScoreRun, args, shard=resolve_shard(args.shard, torch_ranks=False))
    opts = build(ScoreOptions, args)
    dims = init_distributed(device=run.device)
    try:
        stats = score_dataset(run, opts, dims)
    finally:
        dims.close()
    if dims.is_main:
        keys = ("num_sequences", "parts_computed", "parts_skipped", "sequences_per_s", "tokens_per_s")
        print(json.dumps({k: stats[k] for k in keys}))
    return 0
