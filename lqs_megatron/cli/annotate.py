"""`lqs` subcommands of the annotate area: annotate (see lqs_megatron/cli/__init__.py for the conventions).

The work is done by :mod:`lqs_megatron.lqs.annotate`; docs/annotation.md explains the method.
"""

from __future__ import annotations

import argparse
import json

FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "annotate",
        help="LQS (or PDS) scores of the proxy set",
        description="Replay T steps of plain SGD of the model on the train stream (stored order), run the costate "
        "backward with Hessian-vector products, and score every proxy example at the steps i % K == 0 "
        "(LQS_ALGORITHM.md). Writes OUT/raw_scores.npy (float64, proxy order), OUT/scores.npy (normalised, "
        "clipped to [-3, 3]), OUT/example_loss.npy (each example's loss at theta_0) and OUT/annotate.json (with a "
        "health verdict of the replay: warnings are logged; --strict makes them an error). Run under torchrun "
        "for data (and --tp tensor) parallelism.",
        formatter_class=FMT,
    )
    req = p.add_argument_group("required")
    req.add_argument("--model", required=True, metavar="HF_DIR", help="annotation model (Mistral/Llama HF directory)")
    req.add_argument("--train", required=True, metavar="PREFIX", help="train stream D_train (indexed dataset)")
    req.add_argument("--target", required=True, metavar="PREFIX", help="target set D_tgt (indexed dataset)")
    req.add_argument("--proxy", required=True, metavar="PREFIX", help="proxy set D_px to score (indexed dataset)")
    req.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--steps", type=int, default=100, metavar="T", help="SGD steps of the replayed trajectory")
    p.add_argument(
        "--lr",
        type=_lr,
        default=0.008,
        metavar="ETA",
        help="SGD learning rate, or 'auto': the largest rate of --lr-grid whose first --lr-probe-steps replay steps "
        "still decrease the target loss by at least half the first-order prediction from the smallest rate "
        "(docs/annotation.md, 'Choosing the learning rate'; costs at most grid x P train steps and target forwards)",
    )
    p.add_argument(
        "--lr-grid",
        type=_grid,
        default=None,
        metavar="R1,R2,...",
        help="rates tried by --lr auto (default: 1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3,1)",
    )
    p.add_argument(
        "--lr-probe-steps", type=int, default=10, metavar="P", help="replay steps per rate of --lr auto (at most T)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero (after writing the outputs) when the health check warns: the replay's target loss "
        "rose or did not fall, the train loss diverged, or the scores follow length / own loss (annotate.json health)",
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="global train batch size")
    p.add_argument("--interval", type=int, default=10, metavar="K", help="score at the steps i with i %% K == 0")
    p.add_argument("--max-length", type=int, default=1024, metavar="L", help="examples are cut to L+1 tokens")
    p.add_argument("--method", choices=("lqs", "pds"), default="lqs", help="score: LQS (DELT) or PDS")
    p.add_argument(
        "--micro-batch-size", type=int, default=4, help="train/target examples per forward+backward, per rank"
    )
    p.add_argument("--proxy-batch-size", type=int, default=16, help="proxy examples per statistics pass, per rank")
    p.add_argument(
        "--dtype",
        choices=("float32", "float64", "bf16"),
        default="float32",
        help="float32; float64 (everything in float64); bf16 (autocast on float32 master weights)",
    )
    p.add_argument("--proxy-num", type=int, default=None, metavar="N", help="score only the first N proxy examples")
    p.add_argument("--ckpt-dir", default=None, help="trajectory checkpoints (default: OUT/trajectory)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/state and the checkpoints")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep the trajectory checkpoints and the state after success"
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (the rest of the torchrun world is dp)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="device (default: CUDA when available)")
    p.add_argument(
        "--kernel-backend", choices=("auto", "triton", "torch"), default="auto", help="per-example statistic kernels"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of torch's generators (the method draws none)")
    p.set_defaults(func=_annotate)


def _lr(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _grid(text: str) -> tuple[float, ...]:
    from lqs_megatron.lqs.lr_probe import parse_grid  # noqa: PLC0415

    try:
        return tuple(parse_grid(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _annotate(args: argparse.Namespace) -> int:
    from lqs_megatron.distributed import init_distributed  # noqa: PLC0415
    from lqs_megatron.errors import LQSError  # noqa: PLC0415
    from lqs_megatron.lqs.annotate import AnnotateConfig, annotate, fault_hooks_from_env  # noqa: PLC0415
    from lqs_megatron.lqs.lr_probe import DEFAULT_GRID  # noqa: PLC0415

    cfg = AnnotateConfig(
        model=args.model,
        train=args.train,
        target=args.target,
        proxy=args.proxy,
        out=args.out,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        interval=args.interval,
        max_length=args.max_length,
        method=args.method,
        micro_batch_size=args.micro_batch_size,
        proxy_batch_size=args.proxy_batch_size,
        dtype=args.dtype,
        proxy_num=args.proxy_num,
        ckpt_dir=args.ckpt_dir,
        resume=args.resume,
        keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        tp=args.tp,
        backend=args.kernel_backend,
        lr_grid=args.lr_grid or DEFAULT_GRID,
        lr_probe_steps=args.lr_probe_steps,
    )
    dims = init_distributed(tp=args.tp, device=args.device)
    try:
        record = annotate(cfg, dims, on_scoring=fault_hooks_from_env())
    finally:
        dims.close()
    health = record["health"]
    if dims.is_main:
        summary = {k: record[k] for k in ("method", "num_proxy", "timings_s")}
        summary["lr"] = record["arguments"]["lr"]
        summary["health"] = {"ok": health["ok"], "warnings": [w["kind"] for w in health["warnings"]]}
        print(json.dumps({"out": args.out, **summary}))
    if args.strict and not health["ok"]:
        kinds = ", ".join(w["kind"] for w in health["warnings"])
        raise LQSError(f'--strict: the health check warned ({kinds}); see {args.out}/annotate.json "health"')
    return 0
