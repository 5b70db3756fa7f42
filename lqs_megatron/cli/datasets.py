"""`lqs` subcommands of the datasets area (sample-proxy, merge, export-jsonl) (see lqs_megatron/cli/__init__.py for the conventions)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
