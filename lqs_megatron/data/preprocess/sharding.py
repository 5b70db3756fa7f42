"""Sharded corpus-wide runs: ``--shard I/N`` (or the launcher's environment) and where each shard's work lies.

A corpus too big for one machine is processed as ``N`` independent runs, one per shard,
each writing its own output (:func:`shard_output`: ``OUT`` + ``.shard-IIIII-of-NNNNN``),
then ``lqs merge --shards OUT`` joins them into exactly what one run would have written.

Which shard a process is (:func:`resolve_shard`): ``--shard I/N`` wins; otherwise a Slurm
job array (``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN``, divided by
``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT``) and, for commands that are not
data parallel themselves, torchrun's ``RANK``/``WORLD_SIZE`` (combined with an array:
shard ``task * WORLD_SIZE + RANK`` of ``COUNT * WORLD_SIZE``). ``lqs score`` is data
parallel under torchrun, so there ``RANK``/``WORLD_SIZE`` keep that meaning and only
``--shard`` or a job array shard it. One shard (``N = 1``) is an ordinary run.

What shard ``I`` of ``N`` reads (:func:`split_sources`), deterministic and the same on
every node: the input files, in order, are one stream of ``W`` bytes (their sizes on
disk). The nominal cuts are at bytes ``s * W // N``; each is moved to the next *item*
start: a line start in a plain jsonl file (so a single 100 GB file splits too), a row of
a parquet/arrow file (rows spread evenly over the file's bytes), or the start of a
compressed jsonl file (``.gz``/``.zst``/``.xz``/``.bz2`` cannot be split: whole files go
to the shard where they start). Then the cuts are pushed apart so that every shard holds
at least one item whenever the inputs hold at least ``N`` items (lines, rows, compressed
files). Shard ``I`` covers the items from cut ``I`` up to cut ``I + 1``.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
import re
from dataclasses import dataclass

from lqs_megatron.data.preprocess.jsonl import BadLine
from lqs_megatron.data.preprocess.sources import (
    Segment,
    Source,
    _find_newline,
    _rfind_newline,
    end,
    expand_inputs,
    iter_segment,
    line_base,
    sniff,
)
from lqs_megatron.errors import LQSError

logger = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_FILE_EXTS = (".jsonl", ".parquet", ".npy", ".json")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise LQSError(f"--shard {self.index}/{self.count}: need 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"


def parse_shard(text: str) -> Shard:
    m = _SHARD_RE.match(str(text))
    if not m:
        raise LQSError(f"--shard takes I/N (e.g. 0/8), got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def _env_int(env, name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise LQSError(f"environment variable {name}={value!r} is not an integer") from None


def shard_from_env(env=None, torch_ranks: bool = True) -> Shard | None:
    """The shard a Slurm array task (and, with ``torch_ranks``, a torchrun rank) stands for; None outside both."""
    env = os.environ if env is None else env
    index, count = 0, 1
    task, tasks = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and tasks is not None:
        lo, step = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0, _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        if (task - lo) % step or not 0 <= (task - lo) // step < tasks:
            raise LQSError(
                f"Slurm array task {task} is not one of {tasks} evenly spaced tasks from {lo} (step {step}); "
                "use --array=0-<N-1> or pass --shard I/N"
            )
        index, count = (task - lo) // step, tasks
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if torch_ranks and rank is not None and world is not None and world > 1:
        index, count = index * world + rank, count * world
    return Shard(index, count) if count > 1 else None


def resolve_shard(flag: str | None, torch_ranks: bool = True, env=None) -> Shard | None:
    """``--shard`` if given (``none``: a whole run whatever the environment), else :func:`shard_from_env`;
    ``None`` for a single, unsharded run. A shard taken from the environment is logged."""
    if flag is not None and str(flag).strip().lower() == "none":
        return None
    if flag:
        shard = parse_shard(flag)
    else:
        shard = shard_from_env(env, torch_ranks)
        if shard is not None:
            logger.warning(
                "running shard %s, taken from the environment (Slurm job array%s); pass --shard none to process "
                "all the input in this process",
                shard,
                ", torchrun ranks" if torch_ranks else "",
            )
    return shard if shard is not None and shard.count > 1 else None


def shard_output(path: str | os.PathLike, shard: Shard | None) -> str:
    """Where shard ``shard`` of a run with ``--out path`` writes: ``path.shard-IIIII-of-NNNNN``, before a
    file extension (``x.jsonl`` -> ``x.shard-00001-of-00004.jsonl``); ``path`` itself when unsharded."""
    path = os.fspath(path)
    if shard is None:
        return path
    trimmed = path.rstrip("/")
    for ext in _FILE_EXTS:
        if trimmed.endswith(ext):
            return f"{trimmed[: -len(ext)]}.{shard.suffix}{ext}"
    return f"{trimmed}.{shard.suffix}"


def find_shard_outputs(path: str | os.PathLike, marker: str = "") -> list[str]:
    """The ``N`` outputs of a sharded run with ``--out path``, in shard order.

    A shard counts as finished when ``shard_output(path, i) + marker`` exists (``marker``: the file a
    finished shard writes last, e.g. ``.stats.json``); an error names the missing or unfinished ones.
    """
    path = os.fspath(path).rstrip("/")
    before, ext = shard_output(path, Shard(0, 2)).split(".shard-00000-of-00002")
    name = re.compile(re.escape(os.path.basename(before)) + r"\.shard-(\d{5})-of-(\d{5})" + re.escape(ext))
    found = set()
    for p in glob.glob(glob.escape(before) + ".shard-*-of-*" + glob.escape(ext) + "*"):
        m = name.match(os.path.basename(p))
        if m:
            found.add(int(m.group(2)))
    if not found:
        raise LQSError(f"no shard outputs of {path!r} (expected {shard_output(path, Shard(0, 2))} and so on)")
    if len(found) > 1:
        raise LQSError(f"{path!r} has shard outputs of several shard counts ({sorted(found)}); remove the stale ones")
    count = found.pop()
    outs = [shard_output(path, Shard(i, count)) for i in range(count)]
    missing = [i for i, o in enumerate(outs) if not os.path.exists(o + marker)]
    if missing:
        names = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise LQSError(
            f"{len(missing)} of {count} shards of {path!r} are missing or unfinished (shards {names}, e.g. no "
            f"{outs[missing[0]] + marker}); rerun them with the same command"
        )
    return outs


def split_range(n: int, shard: Shard | None, unit: int = 1) -> tuple[int, int]:
    """Shard ``shard``'s part ``[a, b)`` of ``n`` ordered items: contiguous, cut at multiples of ``unit`` (the
    shards' numbers of units differ by at most one; with fewer units than shards some shards are empty)."""
    if shard is None:
        return 0, n
    units = -(-n // unit)
    lo, hi = shard.index * units // shard.count, (shard.index + 1) * units // shard.count
    return min(lo * unit, n), min(hi * unit, n)


# --------------------------------------------------------------------------- byte-range cuts


class _Items:
    """Navigation over the items of the inputs: positions ``(file, local)``; ``END`` after the last file."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.offsets = [0]
        for s in sources:
            self.offsets.append(self.offsets[-1] + s.size)
        self.END = (len(sources), 0)
        self._fds: dict[int, int] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)

    def _fd(self, k: int) -> int:
        if k not in self._fds:
            self._fds[k] = os.open(self.sources[k].path, os.O_RDONLY)
        return self._fds[k]

    def first_in(self, k: int, x: int) -> int | None:
        """The first item of file ``k`` at local byte weight ``>= x``."""
        src = self.sources[k]
        if src.columnar:
            rows = src.rows
            r = -(-x * rows // src.size) if src.size else 0
            return r if r < rows else None
        if src.compression is not None:
            return 0 if x == 0 else None
        if x >= src.size:
            return None
        if x == 0 or os.pread(self._fd(k), 1, x - 1) == b"\n":
            return x
        q = _find_newline(self._fd(k), x, src.size)
        return q + 1 if q is not None and q + 1 < src.size else None

    def next_in(self, k: int, p: int) -> int | None:
        src = self.sources[k]
        if src.columnar:
            return p + 1 if p + 1 < src.rows else None
        if src.compression is not None:
            return None
        q = _find_newline(self._fd(k), p, src.size)
        return q + 1 if q is not None and q + 1 < src.size else None

    def prev_in(self, k: int, p: int) -> int | None:
        """The last item of file ``k`` before local position ``p``."""
        if p <= 0:
            return None
        src = self.sources[k]
        if src.columnar or src.compression is not None:
            return p - 1 if src.columnar else 0
        q = _rfind_newline(self._fd(k), p - 1)
        return 0 if q is None else q + 1

    def first_at(self, x: int) -> tuple[int, int]:
        k0 = max(bisect.bisect_right(self.offsets, x) - 1, 0)
        for k in range(k0, len(self.sources)):
            p = self.first_in(k, x - self.offsets[k] if k == k0 else 0)
            if p is not None:
                return k, p
        return self.END

    def next(self, pos: tuple[int, int]) -> tuple[int, int]:
        k, p = pos
        if k >= len(self.sources):
            return self.END
        q = self.next_in(k, p)
        if q is not None:
            return k, q
        return self.first_at(self.offsets[k + 1]) if k + 1 < len(self.sources) else self.END

    def prev(self, pos: tuple[int, int]) -> tuple[int, int] | None:
        k, p = pos
        if k < len(self.sources):
            q = self.prev_in(k, p)
            if q is not None:
                return k, q
        for j in range(min(k, len(self.sources)) - 1, -1, -1):
            q = self.prev_in(j, end(self.sources[j]))
            if q is not None:
                return j, q
        return None


def cuts(sources: list[Source], count: int) -> list[tuple[int, int]]:
    """The ``count + 1`` cut positions ``(file, local)`` (first ``(0, 0)``, last the end); see the module docstring."""
    items = _Items(sources)
    try:
        total = items.offsets[-1]
        b = [(0, 0)] + [items.first_at(s * total // count) for s in range(1, count)] + [items.END]
        first = items.first_at(0)
        if first == items.END:
            return b
        cur = first
        for s in range(1, count):  # every shard after the first starts after the previous one's first item
            b[s] = max(b[s], items.next(cur))
            cur = b[s]
        for s in range(count - 1, 0, -1):  # ... and leaves an item to the shards after it
            before = items.prev(b[s + 1])
            b[s] = min(b[s], before if before is not None else (0, 0))
        for s in range(1, count):
            b[s] = max(b[s], b[s - 1])
        return b
    finally:
        items.close()


def split_sources(sources: list[Source], shard: Shard | None) -> list[Segment]:
    """The segments shard ``shard`` reads, in input order (every file whole when unsharded)."""
    if shard is None:
        return [Segment(k, 0, end(s)) for k, s in enumerate(sources)]
    b = cuts(sources, shard.count)
    (k0, p0), (k1, p1) = b[shard.index], b[shard.index + 1]
    out = []
    for k, src in enumerate(sources):
        if k < k0 or k > k1:
            continue
        lo = p0 if k == k0 else 0
        hi = p1 if k == k1 else end(src)
        if lo < hi:
            out.append(Segment(k, lo, hi))
    return out


# --------------------------------------------------------------------------- reading a shard


@dataclass
class ShardInputs:
    """What one (shard of a) run reads: every input file, identified, and its segments of them."""

    files: list[str]
    sources: list[Source]
    segments: list[Segment]
    shard: Shard | None = None

    def batches(self, columns: list[str] | None, batch_lines: int, batch_bytes: int):
        """``(path, numbers, rows)`` tasks over the segments, in input order (:func:`iter_segment`)."""
        for seg in self.segments:
            yield from iter_segment(self.sources[seg.index], seg, columns, batch_lines, batch_bytes)

    def describe(self) -> dict:
        """For the stats: the shard, its segments ``[file index, lo, hi]`` (bytes, rows, or 0-1 for a whole
        compressed file) and every file's end in those units (the merge checks that the shards tile the input)."""
        return {
            "index": self.shard.index,
            "count": self.shard.count,
            "segments": [[s.index, s.lo, s.hi] for s in self.segments],
            "ends": [end(s) for s in self.sources],
        }

    def relocate(self, err: BadLine) -> BadLine:
        """``err`` with its line number counted from the start of its file (segments of a plain jsonl file that
        start inside it number their lines from the segment; the file is read up to there only now)."""
        if err.line is None:
            return err
        base = self._bases.get(err.path)
        if base is None:
            starts = [
                s.lo
                for s in self.segments
                if self.sources[s.index].path == err.path and self.sources[s.index].splittable_bytes
            ]
            base = line_base(err.path, starts[0]) if starts and starts[0] > 0 else 0
            self._bases[err.path] = base
        return err if base == 0 else BadLine(err.kind, err.reason, err.path, err.line + base)

    def __post_init__(self):
        self._bases: dict[str, int] = {}


def check_tiling(shards: list[dict]) -> str | None:
    """Why the shards' ``segments`` (:meth:`ShardInputs.describe`) do not cover every file once, in order, or None.

    Catches shards cut from inputs that changed between the shards' runs (a file that grew, was replaced or
    reordered): their byte ranges would overlap or leave gaps.
    """
    ends = shards[0].get("ends")
    if ends is None or any(s.get("ends") != ends for s in shards):
        return "the shards saw input files of different sizes (did the input change between the shards' runs?)"
    pos = (0, 0)
    for s in shards:
        for k, lo, hi in s["segments"]:
            while pos[0] < k and pos[1] >= ends[pos[0]]:  # the file before is read to its end (or empty)
                pos = (pos[0] + 1, 0)
            if (k, lo) != pos or not lo < hi <= ends[k]:
                return f"shard {s['index']} starts file {k} at {lo}, where the shards before it end at {list(pos)}"
            pos = (k, hi)
    while pos[0] < len(ends) and pos[1] >= ends[pos[0]]:
        pos = (pos[0] + 1, 0)
    return None if pos[0] == len(ends) else f"the shards leave file {pos[0]} unread from {pos[1]}"


def plan_inputs(inputs, shard: Shard | None) -> ShardInputs:
    """Expand and identify the inputs, and cut shard ``shard``'s segments of them."""
    files = expand_inputs(inputs)
    sources = [sniff(f) for f in files]
    return ShardInputs(files, sources, split_sources(sources, shard), shard)
