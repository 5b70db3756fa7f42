"""The ``lqs`` command: one subcommand per pipeline step.

Each module of this package owns the subcommands of one area and exposes
``register(subparsers)``; every subcommand sets ``func`` (``args -> int | None``)
with :meth:`argparse.ArgumentParser.set_defaults`. A subcommand's flags are generated
from its settings' dataclasses (:mod:`lqs_megatron.cli.options`) when it is used, and
handlers import heavy modules (torch, transformers) lazily, so ``lqs --help`` is instant.

Only this package parses arguments; library code takes plain values. Errors that
the user can fix are raised as :class:`lqs_megatron.errors.LQSError` and printed
here as one line with a non-zero exit (1); argparse usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from lqs_megatron import __version__
from lqs_megatron.cli.options import Command
from lqs_megatron.errors import LQSError, Terminated

# Order is the order of `lqs --help`: the pipeline, upstream first.
COMMAND_MODULES = ("data", "datasets", "train", "annotate", "scorer", "curate", "pipeline")

EPILOG = """\
The pipeline, in order:
  train-tokenizer, tokenize, tokenize-target, retokenize    (tokenization)
  sample-proxy, merge, export-jsonl                         (dataset tools)
  pretrain, evaluate, export-hf                             (model)
  annotate, report                                          (LQS scores; where scores come from)
  prepare-scorer-data, train-scorer, score                  (scorer)
  select, order                                             (curation)
  pipeline, demo                                            (everything)
Run `lqs COMMAND --help` for the flags of one step. Everything reads local paths only.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lqs",
        description="Score, select and order LLM pretraining data with the Learnability-Quality Score (LQS).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lqs_megatron {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("LQS_LOG_LEVEL", "INFO"), help="logging level (default: INFO)"
    )
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="torch's intra-op threads on the CPU (default: OMP_NUM_THREADS if set, else the cores free now, "
        "lqs_megatron/utils/threads.py); passed on to the steps of lqs pipeline / demo",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Command)
    for name in COMMAND_MODULES:
        importlib.import_module(f"lqs_megatron.cli.{name}").register(sub)
    return parser


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def _setup_logging(level: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO) if rank == 0 else logging.WARNING,
        format=("%(asctime)s " if rank == 0 else f"[rank{rank}] ") + "%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


_MAIN_PID = os.getpid()


def _terminate(signum, frame) -> None:
    # a forked worker in the moment before it sets SIGTERM's default itself (data/preprocess/pool.py): it dies as
    # by default, its parent reports
    if os.getpid() != _MAIN_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _setup_logging(args.log_level)
    from lqs_megatron.utils.threads import configure_threads

    configure_threads(args.threads)
    # SIGTERM (Slurm preemption or time limit) ends the run like Ctrl-C: cleanup runs, the output lock is released
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        rc = args.func(args)
    except LQSError as e:
        print(f"lqs {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"lqs {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"lqs {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
