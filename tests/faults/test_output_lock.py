"""utils/lock.py: one run per output; a second run fails naming the holder; stale locks are taken over."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket

import pytest

from lqs_megatron.utils.lock import OutputLocked, lock_path, output_lock


def _hold(out: str, ready, release) -> None:
    with output_lock(out, command="holder-cmd"):
        ready.set()
        release.wait(30)


def test_second_holder_fails_naming_the_first(tmp_path):
    out = str(tmp_path / "run")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(out, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputLocked) as e:
            with output_lock(out):
                pass
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and "holder-cmd" in msg and socket.gethostname() in msg
    finally:
        release.set()
        p.join(30)
    with output_lock(out) as path:  # released: free again
        assert json.loads(open(path).read())["pid"] == os.getpid()
    assert not os.path.exists(lock_path(out))


def test_killed_holder_releases_and_stale_file_is_taken_over(tmp_path, caplog):
    out = str(tmp_path / "data" / "prefix")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(out, ready, release))
    p.start()
    assert ready.wait(30)
    p.kill()
    p.join(30)
    assert os.path.exists(lock_path(out))  # SIGKILL leaves the file behind ...
    with caplog.at_level("WARNING"), output_lock(out):  # ... but it is stale: taken over with a warning
        pass
    assert "stale lock" in caplog.text and str(p.pid) in caplog.text


def test_lock_of_another_host_is_refused(tmp_path):
    out = tmp_path / "ckpt"
    with open(lock_path(out), "w") as f:
        json.dump({"pid": 1, "host": "some-other-node", "started": "2026-01-01T00:00:00+00:00", "command": "x"}, f)
    with pytest.raises(OutputLocked, match="some-other-node"):
        with output_lock(out):
            pass


def test_disabled_lock_takes_nothing(tmp_path):
    with output_lock(tmp_path / "o", enabled=False) as path:
        assert path is None
        with output_lock(tmp_path / "o"):
            pass


def test_lock_path_ignores_trailing_slash(tmp_path):
    assert lock_path(f"{tmp_path}/dir/") == f"{tmp_path}/dir.lock"
