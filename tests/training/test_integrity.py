"""utils/integrity.py: checksums written at save time, validated loads that name the file, finite weights,
full and read-only disks reported in one line; checkpoint rotation and the resume fallback."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors.torch import save_file

from lqs_megatron.errors import LQSError
from lqs_megatron.utils.integrity import (
    CorruptFile,
    check_finite,
    digest_files,
    disk_errors,
    files_under,
    load_safetensors,
    torch_load,
    verify_dir,
    write_manifest,
)


@pytest.fixture
def ckpt(tmp_path):
    """A directory with a safetensors file, a torch.save archive, a json file and its manifest."""
    d = tmp_path / "step_00000001"
    d.mkdir()
    save_file({"w": torch.randn(64, 32), "b": torch.randn(32)}, d / "model.safetensors")
    torch.save({"state": {0: torch.randn(100)}}, d / "optimizer.pt")
    (d / "sub").mkdir()
    (d / "sub" / "x.json").write_text('{"a": 1}')
    write_manifest(d, digest_files(d, files_under(d)))
    return d


def test_manifest_lists_every_file_and_validates(ckpt):
    manifest = json.loads((ckpt / "checksums.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "sub/x.json"}
    verify_dir(ckpt)
    assert set(load_safetensors(ckpt / "model.safetensors")) == {"w", "b"}
    assert torch_load(ckpt / "optimizer.pt")["state"][0].shape == (100,)


def test_a_flipped_byte_is_a_checksum_error(ckpt):
    f = ckpt / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-7] ^= 0x01  # inside the tensor data: size and header unchanged
    f.write_bytes(bytes(raw))
    differs = r"model.safetensors: checksum [0-9a-f]{8} differs from the [0-9a-f]{8} written"
    with pytest.raises(CorruptFile, match=differs):
        load_safetensors(f)
    with pytest.raises(CorruptFile, match="model.safetensors: checksum"):
        verify_dir(ckpt)
    verify_dir(ckpt, crc=False)  # sizes and headers alone cannot see it


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
@pytest.mark.parametrize("manifest", [True, False])
def test_truncation_is_named_with_or_without_checksums(ckpt, name, manifest):
    if not manifest:  # a checkpoint written before checksums existed
        (ckpt / "checksums.json").unlink()
    f = ckpt / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    load = load_safetensors if name.endswith(".safetensors") else torch_load
    with pytest.raises(CorruptFile, match=f"{f}: .*truncated") as e:
        load(f)
    assert e.value.path == str(f)
    with pytest.raises(CorruptFile, match=name):
        verify_dir(ckpt)


def test_check_finite_names_the_tensor():
    sd = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf"), float("nan")]), "i": torch.arange(3)}
    with pytest.raises(CorruptFile, match=r"FILE: tensor 'b' holds 2 non-finite value\(s\)"):
        check_finite(sd, "FILE")
    check_finite({"a": torch.ones(2), "i": torch.arange(3)}, "FILE")


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device", "/x/f"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save
    ],
)
def test_disk_full_in_any_writer_is_one_line(exc):
    with pytest.raises(LQSError, match=r"^no space left on OUT while writing checkpoint step_3 \("):
        with disk_errors("OUT", "checkpoint step_3"):
            raise exc


def test_read_only_and_other_errors():
    with pytest.raises(LQSError, match="^OUT is read-only: cannot write the checkpoint$"):
        with disk_errors("OUT"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        with disk_errors("OUT"):
            raise KeyError("x")


def _fake_step(root, step: int, good: bool = True):
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"format": "lqs_megatron.checkpoint", "version": 1}')
    (d / "trainer.json").write_text(json.dumps({"step": step}))
    save_file({"w": torch.randn(8)}, d / "model-tp00-of-01.safetensors")
    write_manifest(d, digest_files(d, files_under(d)))
    if not good:
        f = d / "model-tp00-of-01.safetensors"
        f.write_bytes(f.read_bytes()[:-3])
    return d


def test_resume_fallback_and_rotation(tmp_path):
    from lqs_megatron.training.checkpoint import find_resume_dir, rotate

    for s, good in [(1, True), (2, True), (3, False), (4, False), (5, True)]:
        _fake_step(tmp_path, s, good)
    (tmp_path / "step_00000006.tmp").mkdir()  # an interrupted write: never a candidate
    (tmp_path / "latest").write_text("step_00000004\n")  # step 5 is newer than latest: left alone
    d, skipped = find_resume_dir(tmp_path)
    assert d.name == "step_00000002"
    assert [s.split(":")[0] for s in skipped] == ["step_00000004", "step_00000003"]
    assert "model-tp00-of-01.safetensors" in skipped[0] and "truncated" in skipped[0]
    assert rotate(tmp_path, 2) == ["step_00000002", "step_00000001"]  # keeps latest (4) and 3; 5 untouched
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_00000003",
        "step_00000004",
        "step_00000005",
        "step_00000006.tmp",
    ]
    with pytest.raises(LQSError, match="no checkpoint under .* validates: step_00000004: .*; step_00000003: "):
        find_resume_dir(tmp_path)
