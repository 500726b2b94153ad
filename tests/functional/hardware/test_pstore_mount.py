"""erase_pstore with real mounts: the mount-when-unmounted path, read-only and nested mounts.

The host's own pstore is mounted for real only where no backend is registered
(so it cannot hold records this test would erase); records themselves live in
a directory bind-mounted in pstore's place.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from agent.disk import mounts
from agent.errors import CleaningError
from agent.hardware import pstore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")

RECORDS = {"dmesg-efi-1": b"a" * 100, "dmesg-efi-2": b"b" * 50}


def seed(where) -> None:
    os.makedirs(where, exist_ok=True)
    for name, data in RECORDS.items():
        (where / name).write_bytes(data)


def paths(tmp_path, mounts_text: str, filesystems: str = "nodev\tpstore\n") -> dict:
    (tmp_path / "mounts").write_text(mounts_text)
    (tmp_path / "filesystems").write_text(filesystems)
    return {"mounts_path": str(tmp_path / "mounts"),
            "filesystems_path": str(tmp_path / "filesystems")}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def test_unmounted_pstore_is_mounted_cleared_and_unmounted(tmp_path, monkeypatch):
    records = tmp_path / "backend"
    seed(records)
    target = tmp_path / "sys-fs-pstore"
    target.mkdir()
    seen = []

    def bind_records(where):
        seen.append(where)
        return mounts.mounted(str(records), where, bind=True, what="pstore stand-in")
    monkeypatch.setattr(pstore, "_mount_pstore", bind_records)
    result = pstore.erase_pstore({}, [], mount_point=str(target),
                                 **paths(tmp_path, "sysfs /sys sysfs rw 0 0\n"))
    assert seen == [str(target)]
    assert result["pstore"] == {"mount_point": str(target), "mounted_by_agent": True,
                                "count": 2, "bytes": 150, "removed": sorted(RECORDS)}
    assert os.listdir(records) == []                   # erased through the mount
    assert not mounts.is_mounted(str(target))          # and left as found


def test_without_the_kernel_mount_point_a_temporary_one_is_used(tmp_path, monkeypatch):
    records = tmp_path / "backend"
    seed(records)
    monkeypatch.setattr(pstore, "_mount_pstore", lambda where: mounts.mounted(
        str(records), where, bind=True, what="pstore stand-in"))
    result = pstore.erase_pstore({}, [], mount_point=str(tmp_path / "absent"),
                                 **paths(tmp_path, ""))
    where = result["pstore"]["mount_point"]
    assert where.startswith("/tmp/deploy-agent-mnt-") and result["pstore"]["count"] == 2
    assert not os.path.exists(where)                   # the temporary directory is gone


def test_read_only_pstore_fails_naming_what_stayed(tmp_path):
    store = tmp_path / "pstore"
    seed(store)
    sh("mount", "--bind", str(store), str(store))
    try:
        sh("mount", "-o", "remount,ro,bind", str(store))
        with pytest.raises(CleaningError) as exc:
            pstore.erase_pstore({}, [], **paths(tmp_path, f"pstore {store} pstore ro 0 0\n"))
    finally:
        mounts.unmount(str(store))
    assert "could not remove 2" in exc.value.details
    assert "dmesg-efi-1: Read-only file system" in exc.value.details
    assert sorted(os.listdir(store)) == sorted(RECORDS)


def test_a_mount_below_the_pstore_directory_is_left_alone(tmp_path):
    store = tmp_path / "pstore"
    seed(store)
    (store / "other").mkdir()
    sh("mount", "-t", "tmpfs", "tmpfs", str(store / "other"))
    try:
        (store / "other" / "keep").write_bytes(b"not pstore's")
        result = pstore.erase_pstore({}, [], **paths(tmp_path,
                                                     f"pstore {store} pstore rw 0 0\n"))
        assert (store / "other" / "keep").read_bytes() == b"not pstore's"
    finally:
        mounts.unmount(str(store / "other"))
    assert result["pstore"]["count"] == 2


def _host_pstore_is_empty() -> bool:
    """True when mounting the host's pstore cannot expose records to erase."""
    if pstore.find_mount() is not None or not pstore.kernel_has_pstore():
        return False
    try:
        with open("/sys/module/pstore/parameters/backend") as f:
            return f.read().strip() == "(null)"
    except OSError:
        return False


@pytest.mark.skipif(not _host_pstore_is_empty(),
                    reason="needs an unmounted pstore with no backend (no records to lose)")
def test_real_pstore_mount_round_trip(tmp_path):
    target = tmp_path / "pstore"
    target.mkdir()
    result = pstore.erase_pstore({}, [], mount_point=str(target))
    assert result["pstore"] == {"mount_point": str(target), "mounted_by_agent": True,
                                "count": 0, "bytes": 0, "removed": []}
    assert not mounts.is_mounted(str(target))
