"""`lqs` subcommands of the train area: pretrain, evaluate, export-hf (conventions: lqs_megatron/cli/__init__.py)."""

from __future__ import annotations

import argparse
import json

_FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a decoder on indexed datasets (torchrun for tp/dp)",
        description="Pretrain a Mistral/Llama decoder on packed samples of indexed datasets, consumed in stored "
        "order (or --shuffle). One process runs as is; launch with torchrun for data (world / tp) and tensor "
        "parallelism (--tp). Checkpoints go to --out every --save-interval steps; --resume continues exactly.",
        formatter_class=_FMT,
    )
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model-config", help="named config (tiny, 160M, 470M, 1B, 1.7B) or YAML path, random init")
    src.add_argument("--tokenizer", help="tokenizer directory: vocabulary and special tokens (with --model-config)")
    src.add_argument("--init-from", help="Hugging Face Mistral/Llama directory to start from")
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PREFIX",
        help="indexed dataset prefix(es), or a Megatron blend: W1 PREFIX1 W2 PREFIX2 ... (one argument or several)",
    )
    d.add_argument("--data-weights", nargs="+", type=float, metavar="W", help="blend weights, one per --data prefix")
    d.add_argument("--valid-data", metavar="PREFIX", help="held-out indexed dataset for the validation loss")
    d.add_argument("--eval-interval", type=int, default=1000, help="validate every N steps (0: only at the end)")
    d.add_argument("--eval-samples", type=int, default=256, help="packed validation samples per evaluation")
    d.add_argument("--shuffle", action="store_true", help="shuffle packed samples (seeded) instead of stored order")
    o = p.add_argument_group("optimisation")
    o.add_argument("--max-length", type=int, required=True, help="tokens per packed sample")
    o.add_argument("--global-batch-size", type=int, required=True, help="samples per step over all ranks")
    o.add_argument("--micro-batch-size", type=int, help="samples per forward/backward per rank (default: all local)")
    o.add_argument("--steps", type=int, required=True, help="optimizer steps")
    o.add_argument("--lr", type=float, required=True, help="peak learning rate")
    o.add_argument("--min-lr", type=float, help="final cosine learning rate (default: lr / 10)")
    o.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: min(2000, steps / 10))")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (matrices only)")
    o.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--adam-beta2", type=float, default=0.98, help="AdamW beta2")
    o.add_argument("--adam-eps", type=float, default=1e-6, help="AdamW epsilon")
    o.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    o.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of --shuffle")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="checkpoint directory")
    r.add_argument("--tp", type=int, default=1, help="tensor-parallel size (data parallel = world / tp)")
    r.add_argument("--make-vocab-size-divisible-by", type=int, default=128, help="vocab padding multiple (x tp)")
    r.add_argument("--save-interval", type=int, default=1000, help="checkpoint every N steps (0: only at the end)")
    r.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint if there is one")
    r.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (reproducible curves)")
    r.add_argument("--log-interval", type=int, default=10, help="log a line every N steps")
    r.add_argument("--stop-after", type=int, help="stop after this step as if killed (tests resume)")
    r.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser(
        "evaluate",
        help="mean per-example loss of a model on an indexed dataset (JSON on the last line)",
        description="Each sequence of PREFIX is one example cut to L+1 tokens; prints as its last line a JSON "
        "object with loss (the mean over examples of each example's mean token cross-entropy), examples and "
        "tokens (predicted positions).",
        formatter_class=_FMT,
    )
    e.add_argument("--model", required=True, help="Hugging Face directory or lqs checkpoint (root or step dir)")
    e.add_argument("--data", required=True, metavar="PREFIX", help="indexed dataset prefix")
    e.add_argument("--max-length", type=int, required=True, help="L: each example is cut to L+1 tokens")
    e.add_argument("--batch-size", type=int, default=16, help="examples per forward pass per rank")
    e.add_argument("--limit", type=int, help="only the first N sequences")
    e.add_argument("--tp", type=int, default=1, help="tensor-parallel size (data parallel = world / tp)")
    e.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA")
    e.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    e.set_defaults(func=_evaluate)

    x = sub.add_parser(
        "export-hf",
        help="convert a checkpoint to a Hugging Face directory",
        description="Merge the tensor-parallel shards of a checkpoint, drop the vocabulary padding and write "
        "config.json, model.safetensors and the tokenizer files.",
        formatter_class=_FMT,
    )
    x.add_argument("--checkpoint", required=True, help="checkpoint root (its latest step) or a step directory")
    x.add_argument("--out", required=True, help="output directory (replaced atomically)")
    x.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights dtype")
    x.set_defaults(func=_export_hf)


def _pretrain(args: argparse.Namespace) -> int:
    from lqs_megatron.errors import LQSError  # noqa: PLC0415
    from lqs_megatron.training.config import PretrainConfig, preflight  # noqa: PLC0415

    if args.model_config is not None and args.tokenizer is None:
        raise LQSError("--model-config needs --tokenizer (the vocabulary and special tokens come from it)")
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k not in ("func", "command", "log_level")})
    preflight(cfg)  # user errors (missing data, a --tp that does not divide the heads, --resume) before any launch

    from lqs_megatron.distributed import init_distributed  # noqa: PLC0415
    from lqs_megatron.training.trainer import pretrain, resolve_model_config  # noqa: PLC0415

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
    from lqs_megatron.distributed import init_distributed  # noqa: PLC0415
    from lqs_megatron.models.loading import load_model  # noqa: PLC0415
    from lqs_megatron.training.evaluate import evaluate_dataset  # noqa: PLC0415

    dims = init_distributed(args.tp, args.device)
    try:
        model = load_model(args.model, dims)
        res = evaluate_dataset(model, args.data, args.max_length, dims, args.batch_size, args.precision, args.limit)
    finally:
        dims.close()
    if dims.is_main:
        print(json.dumps({**res, "model": args.model, "data": args.data, "max_length": args.max_length}))
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from lqs_megatron.training.export import export_hf  # noqa: PLC0415

    out = export_hf(args.checkpoint, args.out, dtype=getattr(torch, args.dtype))
    print(json.dumps({"out": str(out)}))
    return 0
