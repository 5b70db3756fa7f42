"""Resumable state of the backward sweep, saved atomically after every scoring step.

``DIR/state/`` holds, for the last completed step ``i`` (``lambda_i`` known, scores updated
through step ``i``):

- ``lambda_{i}_tp{r}.safetensors``: the costate, one file per tensor-parallel rank (written
  by data-parallel rank 0 of that tp rank);
- ``scores_{i}.npz``: ``s`` and ``c`` for all proxy examples (float64, proxy order);
- ``state.json``: written last, atomically: it names ``i`` and is the commit marker (it also
  holds the target-loss curve so far, the per-step ``cos`` statistics and the timings). Files
  of older steps are removed after it is written.

Only processes of data-parallel rank 0 (global ranks ``0 .. tp-1``) read or write files; the
values are broadcast to the other ranks, so the directory need not be on a shared
filesystem when those ranks share a node.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lqs_megatron.lqs.vectors import ParamSpace, Vector, load_vector, save_vector
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.utils.atomic import atomic_file, save_json


@dataclass
class SweepState:
    """Where the backward sweep stands: ``lam`` is ``lambda_step``; scores include steps ``>= step``."""

    step: int
    lam: Vector
    s: np.ndarray
    c: np.ndarray
    target_losses: dict[int, float] = field(default_factory=dict)
    cos_stats: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per scoring step: ``positive`` (fraction of proxy examples with ``cos > 0``) and ``mean`` cos."""
    timings: dict[str, float] = field(default_factory=dict)
    scoring_steps_done: int = 0


class StateStore:
    def __init__(self, directory: str | Path, dims: ParallelDims, fingerprint: str):
        self.dir = Path(directory)
        self.dims = dims
        self.fingerprint = fingerprint

    def _lam_path(self, step: int, tp_rank: int | None = None) -> Path:
        r = self.dims.tp_rank if tp_rank is None else tp_rank
        return self.dir / f"lambda_{step:06d}_tp{r}.safetensors"

    def _scores_path(self, step: int) -> Path:
        return self.dir / f"scores_{step:06d}.npz"

    def clear(self) -> None:
        """Remove every state file (a fresh run)."""
        if self.dims.dp_rank == 0 and self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(("lambda_", "scores_", "state.json")):
                    p.unlink(missing_ok=True)
        self.dims.barrier()

    def save(self, st: SweepState) -> None:
        """Write ``st`` (collective: every rank calls it). ``s``/``c`` must be complete on rank 0."""
        writer = self.dims.dp_rank == 0
        if writer:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self._lam_path(st.step)) as tmp:
                save_vector(tmp, st.lam)
        if self.dims.is_main:
            with atomic_file(self._scores_path(st.step)) as tmp, open(tmp, "wb") as f:
                np.savez(f, s=st.s, c=st.c)
        self.dims.barrier()
        if self.dims.is_main:
            old = json.loads((self.dir / "state.json").read_text()) if (self.dir / "state.json").is_file() else None
            save_json(
                self.dir / "state.json",
                {
                    "fingerprint": self.fingerprint,
                    "step": st.step,
                    "tp": self.dims.tp,
                    "scoring_steps_done": st.scoring_steps_done,
                    "target_losses": {str(k): v for k, v in sorted(st.target_losses.items())},
                    "cos_stats": {str(k): v for k, v in sorted(st.cos_stats.items())},
                    "timings": st.timings,
                },
            )
            if old is not None and old["step"] != st.step:
                with contextlib.suppress(FileNotFoundError):
                    self._scores_path(old["step"]).unlink()
        self.dims.barrier()
        if writer:
            for p in self.dir.glob(f"lambda_*_tp{self.dims.tp_rank}.safetensors"):
                if p != self._lam_path(st.step):
                    p.unlink(missing_ok=True)

    def load(self, space: ParamSpace, master_dtype: torch.dtype) -> SweepState | None:
        """The saved state if it exists and matches this run's fingerprint (collective), else None."""
        info = None
        if self.dims.is_main and (self.dir / "state.json").is_file():
            info = json.loads((self.dir / "state.json").read_text())
            if info.get("fingerprint") != self.fingerprint or info.get("tp") != self.dims.tp:
                info = None
        info = self.dims.broadcast_object(info)
        if info is None:
            return None
        step = int(info["step"])
        dev = self.dims.device
        if self.dims.dp_rank == 0:
            lam = {n: t.to(master_dtype) for n, t in load_vector(self._lam_path(step), dev).items()}
        else:
            lam = space.zeros(master_dtype)
        if self.dims.dp > 1 and self.dims.dp_group is not None:
            src = self.dims.dp_group_ranks()[0]
            for n in space.params:
                dist.broadcast(lam[n], src=src, group=self.dims.dp_group)
        sc = None
        if self.dims.is_main:
            with np.load(self._scores_path(step)) as z:
                sc = (z["s"].copy(), z["c"].copy())
        s, c = self.dims.broadcast_object(sc)
        return SweepState(
            step=step,
            lam=lam,
            s=s,
            c=c,
            target_losses={int(k): v for k, v in info["target_losses"].items()},
            cos_stats={int(k): v for k, v in info.get("cos_stats", {}).items()},
            timings=dict(info.get("timings", {})),
            scoring_steps_done=int(info.get("scoring_steps_done", 0)),
        )
