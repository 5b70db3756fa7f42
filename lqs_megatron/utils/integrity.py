"""Checkpoint files that are checked before they are trusted: checksums, validated loads, finite weights, full disks.

- :func:`write_manifest` records, at save time, the size and CRC-32 of every file of a
  checkpoint directory in ``checksums.json``; :func:`verify_dir` checks them (and every
  safetensors header) before a checkpoint is used. CRC-32 (zlib, ~3 GB/s) finds truncation
  and corruption; it is not a defence against tampering.
- :func:`load_safetensors` and :func:`torch_load` check one file (size and CRC-32 when the
  manifest lists it, the safetensors header always) and turn any failure into an
  :class:`CorruptFile` naming the file, instead of a raw SafetensorError or
  PytorchStreamReader traceback. :func:`check_finite` names the first tensor holding NaN
  or Inf.
- :func:`disk_errors` turns a full disk (ENOSPC, EDQUOT) or a read-only one (EROFS) met
  while writing into "no space left on DIR" / "DIR is read-only".

Directories written before checksums existed (no ``checksums.json``) are checked by
their safetensors headers and by loading; nothing is required of them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lqs_megatron.errors import LQSError

if TYPE_CHECKING:  # torch is imported where used: the output rule (utils/lock.py) uses this module too
    import torch

MANIFEST = "checksums.json"
_CHUNK = 16 << 20


class CorruptFile(LQSError):
    """A checkpoint file that is missing, truncated, corrupt or holds non-finite values; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def digest(path: str | os.PathLike) -> dict:
    """``{"size", "crc32"}`` of one file (read in 16 MiB chunks)."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"size": size, "crc32": f"{crc:08x}"}


def digest_files(root: str | os.PathLike, names: Iterable[str]) -> dict[str, dict]:
    """:func:`digest` of each ``root/name`` (names relative to ``root``, ``/``-separated)."""
    return {n: digest(Path(root) / n) for n in names}


def files_under(root: str | os.PathLike) -> list[str]:
    """Every regular file under ``root``, relative, sorted (the manifest itself excluded)."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: str | os.PathLike, entries: dict[str, dict]) -> None:
    """``root/checksums.json`` (written directly: ``root`` is a temporary directory renamed when complete)."""
    with open(Path(root) / MANIFEST, "w") as f:
        json.dump({"algorithm": "crc32", "files": dict(sorted(entries.items()))}, f, indent=1)
        f.write("\n")


def read_manifest(root: str | os.PathLike) -> dict[str, dict] | None:
    """The ``files`` of ``root/checksums.json``; None when the directory has none (written before checksums)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(path, f"unreadable checksum manifest ({e})") from None


def verify_file(path: str | os.PathLike, expected: dict | None, crc: bool = True) -> None:
    """Check ``path`` against its manifest entry (size, then CRC-32 when ``crc``) and, for
    ``.safetensors``, its header against its size. Raises :class:`CorruptFile`."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFile(path, "missing")
    size = path.stat().st_size
    if expected is not None:
        if size != expected["size"]:
            raise CorruptFile(path, f"{size} bytes, but {expected['size']} were written (truncated or replaced)")
    if path.suffix == ".safetensors":
        check_safetensors_header(path, size)
    elif path.suffix == ".pt" and not _zip_complete(path):
        raise CorruptFile(path, f"{size} bytes: not a complete torch.save archive (truncated or corrupt)")
    if expected is not None and crc:
        got = digest(path)["crc32"]
        if got != expected["crc32"]:
            raise CorruptFile(path, f"checksum {got} differs from the {expected['crc32']} written at save time")


def _zip_complete(path: Path) -> bool:
    """torch.save writes a zip archive: its central directory sits at the end, so a cut file has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
        return True
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def check_safetensors_header(path: str | os.PathLike, size: int | None = None) -> dict:
    """Parse a safetensors header and check that the file holds every byte it announces; returns the header."""
    size = Path(path).stat().st_size if size is None else size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFile(path, f"{size} bytes: too short for a safetensors file (truncated)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CorruptFile(path, f"safetensors header of {n} bytes does not fit in {size} bytes (truncated)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CorruptFile(path, "unreadable safetensors header (corrupt)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    if need != size:
        raise CorruptFile(path, f"{size} bytes, but its header describes {need} (truncated)")
    return header


def check_finite(tensors: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Raise :class:`CorruptFile` naming the first floating tensor of ``tensors`` that holds NaN or Inf."""
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CorruptFile(
                where,
                f"tensor {name!r} holds {bad} non-finite value(s) (NaN/Inf): the weights are unusable "
                "(the run diverged; use an earlier checkpoint)",
            )


def _entry(path: Path) -> dict | None:
    manifest = read_manifest(path.parent)
    return None if manifest is None else manifest.get(path.name)


def load_safetensors(
    path: str | os.PathLike, device: str = "cpu", finite: bool = True, crc: bool = True
) -> dict[str, torch.Tensor]:
    """A validated ``safetensors.torch.load_file``: size, header, checksum (when recorded), finiteness."""
    from safetensors.torch import load_file

    path = Path(path)
    verify_file(path, _entry(path), crc=crc)
    try:
        sd = load_file(str(path), device=device)
    except Exception as e:  # SafetensorError and friends: name the file
        raise CorruptFile(path, f"cannot be read as safetensors ({type(e).__name__}: {e})") from None
    if finite:
        check_finite(sd, path)
    return sd


def torch_load(path: str | os.PathLike, map_location=None, crc: bool = True):
    """A validated ``torch.load`` (``weights_only=False``: our own optimizer and RNG files)."""
    import torch

    path = Path(path)
    verify_file(path, _entry(path), crc=crc)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # PytorchStreamReader failures, EOFError, unpickling errors: name the file
        why = f"cannot be read by torch.load ({type(e).__name__}: {e}); truncated or corrupt"
        raise CorruptFile(path, why) from None


def verify_dir(root: str | os.PathLike, crc: bool = True) -> None:
    """Check every file the manifest of ``root`` lists, and the headers of the others; raises :class:`CorruptFile`."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is not None:
        for name, entry in manifest.items():
            verify_file(root / name, entry, crc=crc)
    for p in sorted([*root.glob("*.safetensors"), *root.glob("*.pt")]):
        if manifest is None or p.name not in manifest:
            verify_file(p, None)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# how the writers that bypass Python's I/O report a full disk: safetensors (Rust) and torch.save's zip writer
_NO_SPACE_TEXT = ("No space left", "os error 28", "os error 122", "Disk quota exceeded", "unexpected pos")


def is_no_space(e: BaseException) -> bool:
    """True for a full disk or quota, however the writer reported it."""
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    return not isinstance(e, OSError) and any(t in str(e) for t in _NO_SPACE_TEXT)


@contextlib.contextmanager
def disk_errors(where: str | os.PathLike, what: str = "the checkpoint") -> Iterator[None]:
    """Turn a full or read-only disk met in the body into one clear :class:`LQSError` naming ``where``."""
    try:
        yield
    except LQSError:
        raise
    except Exception as e:
        if is_no_space(e):
            detail = e.filename if isinstance(e, OSError) and e.filename else f"{type(e).__name__}: {e}"
            raise LQSError(
                f"no space left on {where} while writing {what} ({detail}); free space or choose another --out"
            ) from None
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            raise LQSError(f"{where} is read-only: cannot write {what}") from None
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            raise LQSError(
                f"no permission to write {what} in {where} ({e.filename or e}); fix the permissions or choose "
                "another --out"
            ) from None
        raise
