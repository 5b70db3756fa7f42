"""Parallel state: one validated :class:`ParallelDims` object, passed down (never module globals).

Layout (Megatron's): ranks are numbered ``rank = dp_rank * tp + tp_rank``, so the ``tp``
ranks of one tensor-parallel group are consecutive (inside one node when ``tp`` divides
the GPUs per node) and data parallelism runs across them.

>>> d = ParallelDims(world_size=8, tp=2, rank=5)
>>> (d.dp, d.tp_rank, d.dp_rank, d.tp_group_ranks(), d.dp_group_ranks())
(4, 1, 2, [4, 5], [1, 3, 5, 7])

The arithmetic needs no process group. :func:`init_distributed` reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
initialises the default group (nccl on CUDA, gloo on the CPU) when the world has more
than one process, and creates the tp and dp groups. One process without torchrun is a
world of 1: no process group at all, every collective is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lqs_megatron.errors import LQSError


@dataclass
class ParallelDims:
    """Sizes and coordinates of this process in the (dp, tp) grid, plus its process groups."""

    world_size: int = 1
    """Number of processes (torchrun's WORLD_SIZE)."""
    tp: int = 1
    """Tensor-parallel size (``--tp``); must divide ``world_size``."""
    rank: int = 0
    """Global rank of this process."""
    local_rank: int = 0
    """Rank inside the node (selects the GPU)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Device of this rank's model and batches."""
    tp_group: object | None = field(default=None, repr=False)
    """Process group of this rank's tensor-parallel peers (None when tp == 1 or no group exists)."""
    dp_group: object | None = field(default=None, repr=False)
    """Process group of this rank's data-parallel peers (None when dp == 1 or no group exists)."""
    owns_process_group: bool = field(default=False, repr=False)
    """True when :func:`init_distributed` created the default group (then :meth:`close` destroys it)."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise LQSError(f"world size must be >= 1, got {self.world_size} (WORLD_SIZE)")
        if self.tp < 1:
            raise LQSError(f"--tp must be >= 1, got {self.tp}")
        if self.world_size % self.tp:
            raise LQSError(
                f"--tp {self.tp} does not divide the world size {self.world_size} "
                f"(torchrun processes = tp x dp; use a tp that divides it)"
            )
        if not 0 <= self.rank < self.world_size:
            raise LQSError(f"rank {self.rank} is outside the world of {self.world_size} (RANK)")
        self.device = torch.device(self.device)

    @property
    def dp(self) -> int:
        """Data-parallel size: ``world_size // tp``."""
        return self.world_size // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def tp_group_ranks(self, rank: int | None = None) -> list[int]:
        """Global ranks of the tensor-parallel group of ``rank`` (default: this rank)."""
        r = self.rank if rank is None else rank
        start = (r // self.tp) * self.tp
        return list(range(start, start + self.tp))

    def dp_group_ranks(self, rank: int | None = None) -> list[int]:
        """Global ranks of the data-parallel group of ``rank`` (default: this rank)."""
        r = self.rank if rank is None else rank
        return list(range(r % self.tp, self.world_size, self.tp))

    def all_tp_groups(self) -> list[list[int]]:
        return [list(range(s, s + self.tp)) for s in range(0, self.world_size, self.tp)]

    def all_dp_groups(self) -> list[list[int]]:
        return [list(range(t, self.world_size, self.tp)) for t in range(self.tp)]

    def build_groups(self) -> ParallelDims:
        """Create the tp and dp process groups (collective: every rank calls it, in the same order)."""
        import torch.distributed as dist

        if not self.distributed:
            return self
        if not dist.is_initialized():
            raise RuntimeError("build_groups needs an initialised default process group")
        if dist.get_world_size() != self.world_size:
            raise LQSError(f"process group has {dist.get_world_size()} ranks, expected {self.world_size}")
        for ranks in self.all_tp_groups():
            g = dist.new_group(ranks)
            if self.rank in ranks and self.tp > 1:
                self.tp_group = g
        for ranks in self.all_dp_groups():
            g = dist.new_group(ranks)
            if self.rank in ranks and self.dp > 1:
                self.dp_group = g
        return self

    def close(self) -> None:
        """Destroy the default process group if :func:`init_distributed` created it."""
        import torch.distributed as dist

        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False

    def barrier(self) -> None:
        """Barrier over the whole world (no-op for one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce(self, t: torch.Tensor, op: str = "sum", group: str = "world") -> torch.Tensor:
        """In-place all-reduce of ``t`` over ``group`` ("world", "dp" or "tp"); identity for one process."""
        import torch.distributed as dist

        g = {"world": None, "dp": self.dp_group, "tp": self.tp_group}[group]
        if not self.distributed or (group != "world" and g is None):
            return t
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        work = t if t.device == self.device else t.to(self.device)  # nccl reduces device tensors only
        dist.all_reduce(work, op=ops[op], group=g)
        if work is not t:
            t.copy_(work)
        return t

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of global rank ``src`` on every rank (picklable; identity for one process)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in global rank order (``[obj]`` for one process)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def all_or_none(self) -> Iterator[None]:
        """Collective: run the body on every rank, then raise on **every** rank if any rank failed.

        A rank that failed re-raises its own exception; the others raise :class:`LQSError` with the
        first failing rank's message. Instead of a barrier after per-rank work (a failed rank would
        leave the others waiting in the barrier until the process-group timeout)."""
        err: BaseException | None = None
        try:
            yield
        except Exception as e:
            err = e
        if not self.distributed:
            if err is not None:
                raise err
            return
        mine = None if err is None else (str(err) if isinstance(err, LQSError) else f"{type(err).__name__}: {err}")
        msgs = self.all_gather_object(mine)
        if err is not None:
            raise err
        failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if failed:
            r, m = failed[0]
            raise LQSError(f"rank {r} failed: {m}")


def rank_slice(n: int, parts: int, rank: int) -> tuple[int, int]:
    """Contiguous ``[lo, hi)`` of ``n`` items for ``rank`` of ``parts`` (the first ``n % parts`` get one more).

    The one way to split work over data-parallel ranks: ``items[lo:hi]`` is ``np.array_split(items,
    parts)[rank]``, and the ranks' shares concatenated in rank order give back the items in order.

    >>> [rank_slice(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(n, parts)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise LQSError(f"environment variable {name}={v!r} is not an integer") from None


def init_distributed(tp: int = 1, device: str | None = None, timeout_minutes: int = 30) -> ParallelDims:
    """The :class:`ParallelDims` of this process, with its process groups created.

    Reads torchrun's environment; without it (plain ``python``/``lqs``) the world is one
    process and nothing is initialised. An already-initialised default group (tests,
    launchers) is reused. ``device``: "cuda", "cpu" or None (CUDA when available).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise LQSError("--device cuda was asked for but no CUDA device is available")
    dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    dims = ParallelDims(world_size=world, tp=tp, rank=rank, local_rank=local_rank, device=dev)
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise LQSError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=dev if use_cuda else None,
        )
        dims.owns_process_group = True
    return dims.build_groups()
