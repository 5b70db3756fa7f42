"""`lqs` subcommands of the train area: pretrain, evaluate, export-hf (conventions: lqs_megatron/cli/__init__.py)."""

from __future__ import annotations

import argparse
import json

from lqs_megatron.cli.options import build, flags, new_command


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``; their flags come from the dataclasses of training/config.py."""
    p = new_command(
        sub,
        "pretrain",
        help="pretrain a decoder on indexed datasets (torchrun for tp/dp)",
        description="Pretrain a Llama/Mistral/Qwen2 decoder on packed samples of indexed datasets, consumed in stored "
        "order (or --shuffle). One process runs as is; launch with torchrun for data (world / tp) and tensor "
        "parallelism (--tp). Checkpoints go to --out every --save-interval steps; --resume continues exactly.",
        setup=flags("lqs_megatron.training.config", "PretrainConfig"),
    )
    p.set_defaults(func=_pretrain)

    e = new_command(
        sub,
        "evaluate",
        help="mean per-example loss of a model on an indexed dataset (JSON on the last line)",
        description="Each sequence of PREFIX is one example cut to L+1 tokens; prints as its last line a JSON "
        "object with loss (the mean over examples of each example's mean token cross-entropy), examples and "
        "tokens (predicted positions).",
        setup=flags("lqs_megatron.training.config", "EvaluateConfig"),
    )
    e.set_defaults(func=_evaluate)

    x = new_command(
        sub,
        "export-hf",
        help="convert a checkpoint to a Hugging Face directory",
        description="Merge the tensor-parallel shards of a checkpoint, drop the vocabulary padding and write "
        "config.json, generation_config.json, model.safetensors and the tokenizer files (tokenizer.model kept), "
        "loadable by transformers 4.x (the floor) and 5.x alike.",
        setup=flags("lqs_megatron.training.config", "ExportHFConfig"),
    )
    x.set_defaults(func=_export_hf)


def _pretrain(args: argparse.Namespace) -> int:
    from lqs_megatron.errors import LQSError
    from lqs_megatron.training.config import PretrainConfig, preflight

    if args.model_config is not None and args.tokenizer is None:
        raise LQSError("--model-config needs --tokenizer (the vocabulary and special tokens come from it)")
    cfg = build(PretrainConfig, args)
    if cfg.wandb:
        from lqs_megatron.utils.progress import require_wandb

        require_wandb()
    preflight(cfg)  # user errors (missing data, a --tp that does not divide the heads, --resume) before any launch

    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.training.pretrainer import pretrain, resolve_model_config

    resolve_model_config(cfg)
    dims = init_distributed(cfg.tp, cfg.device)
    try:
        summary = pretrain(cfg, dims)
    finally:
        dims.close()
    if dims.is_main:
        print(json.dumps(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lqs_megatron.data.tokenizers.fingerprint import check_data_tokenizer, model_tokenizer
    from lqs_megatron.models.loading import load_model
    from lqs_megatron.parallel.dims import init_distributed
    from lqs_megatron.training.config import EvaluateConfig
    from lqs_megatron.training.evaluate import evaluate_dataset

    cfg = build(EvaluateConfig, args)
    check_data_tokenizer(
        {f"--data {cfg.data}": cfg.data},
        model_tokenizer(cfg.model),
        f"--model {cfg.model}",
        cfg.allow_tokenizer_mismatch,
    )
    dims = init_distributed(cfg.tp, cfg.device)
    try:
        model = load_model(cfg.model, dims)
        model.config.check_max_length(cfg.max_length, f"model {cfg.model!r}")
        res = evaluate_dataset(model, cfg.data, cfg.max_length, dims, cfg.micro_batch_size, cfg.precision, cfg.limit)
    finally:
        dims.close()
    if dims.is_main:
        print(json.dumps({**res, "model": cfg.model, "data": cfg.data, "max_length": cfg.max_length}))
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    import torch

    from lqs_megatron.training.config import ExportHFConfig
    from lqs_megatron.training.export import export_hf

    cfg = build(ExportHFConfig, args)
    out = export_hf(cfg.checkpoint, cfg.out, dtype=getattr(torch, cfg.torch_dtype_name))
    print(json.dumps({"out": str(out)}))
    return 0
