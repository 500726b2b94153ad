"""mounts.py against real kernel mounts: busy targets, stacked mounts, failures in the body."""

from __future__ import annotations

import logging
import os

import pytest

from agent.disk import mounts
from agent.errors import CommandExecutionError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount tmpfs")


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(mounts, "UNMOUNT_DELAY", 0.0)


def test_busy_mount_is_retried_then_detached_lazily(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        with mounts.mounted("tmpfs", fstype="tmpfs", what="scratch") as path:
            held = open(os.path.join(path, "held"), "w")     # keeps the mount busy
    try:
        assert mounts.mounted_under(path) == []
        assert not os.path.exists(path)                      # temporary directory removed
        assert caplog.text.count("target is busy") >= mounts.UNMOUNT_ATTEMPTS
        assert "detached it lazily" in caplog.text
    finally:
        held.close()


def test_a_busy_mount_that_frees_up_is_unmounted_normally(tmp_path, monkeypatch, caplog):
    target = tmp_path / "mnt"
    target.mkdir()
    held = []
    # the holder lets go while we back off, as a slow process closing its files would
    monkeypatch.setattr(mounts.time, "sleep", lambda s: [f.close() for f in held])
    with caplog.at_level(logging.INFO):
        with mounts.mounted("tmpfs", str(target), fstype="tmpfs") as path:
            held.append(open(os.path.join(path, "held"), "w"))
    assert mounts.mounted_under(str(target)) == []
    assert "attempt 1 of 5" in caplog.text and "lazily" not in caplog.text


def test_stacked_mounts_and_children_all_go(tmp_path, caplog):
    base = tmp_path / "with space"
    base.mkdir()
    with caplog.at_level(logging.WARNING):
        with mounts.mounted("tmpfs", str(base), fstype="tmpfs"):
            os.mkdir(base / "inner")
            mounts.mount("tmpfs", str(base / "inner"), fstype="tmpfs")
            mounts.mount("tmpfs", str(base), fstype="tmpfs")   # hides "inner"
            assert len(mounts.mounted_under(str(base))) == 3
    assert mounts.mounted_under(str(base)) == []
    assert caplog.text == ""                                   # no lazy detaches needed


def test_a_failing_body_still_unmounts_and_keeps_its_error(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    with pytest.raises(RuntimeError, match="body failed"):
        with mounts.mounted("tmpfs", str(target), fstype="tmpfs"):
            raise RuntimeError("body failed")
    assert mounts.mounted_under(str(target)) == []


def test_mount_failure_is_clear_and_leaves_no_directory():
    before = set(os.listdir("/tmp"))
    with pytest.raises(CommandExecutionError) as err:
        with mounts.mounted("/dev/null", fstype="ext4", what="root filesystem"):
            pass
    assert err.value.details.startswith("could not mount the root filesystem /dev/null on ")
    assert not {d for d in set(os.listdir("/tmp")) - before if d.startswith("deploy-agent-mnt")}
