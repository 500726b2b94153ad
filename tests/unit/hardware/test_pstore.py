"""erase_pstore on a directory standing in for the pstore mount, found through a mounts file."""

from __future__ import annotations

import os

import pytest

from agent.context import CommandContext
from agent.errors import Cancelled
from agent.hardware import pstore

FILESYSTEMS_WITH = "nodev\tsysfs\nnodev\ttmpfs\nnodev\tpstore\n\text4\n"
FILESYSTEMS_WITHOUT = "nodev\tsysfs\nnodev\ttmpfs\n\text4\n"
# as efi-pstore names them: one record split over several files
RECORDS = {"dmesg-efi-171234567801001": b"Oops#1 Part1\n" + b"x" * 1000,
           "dmesg-efi-171234567802001": b"Panic#2 Part1\n" + b"y" * 500,
           "console-ramoops-0": b"[    0.000000] Linux version\n"}


def seed(where, records=RECORDS) -> int:
    os.makedirs(where, exist_ok=True)
    for name, data in records.items():
        with open(os.path.join(where, name), "wb") as f:
            f.write(data)
    return sum(len(d) for d in records.values())


def files(tmp_path, mounts: str, filesystems: str = FILESYSTEMS_WITH) -> dict:
    (tmp_path / "mounts").write_text(mounts)
    (tmp_path / "filesystems").write_text(filesystems)
    return {"mounts_path": str(tmp_path / "mounts"),
            "filesystems_path": str(tmp_path / "filesystems"),
            "mount_point": str(tmp_path / "never-mount-here")}


def mounts_line(path: str) -> str:
    escaped = path.replace("\\", "\\134").replace(" ", "\\040")
    return (f"sysfs /sys sysfs rw,nosuid 0 0\n"
            f"pstore {escaped} pstore rw,nosuid,nodev,noexec,relatime 0 0\n"
            f"tmpfs /run tmpfs rw 0 0\n")


def test_every_record_is_removed_and_reported(tmp_path):
    store = tmp_path / "pstore"
    total = seed(store)
    ctx = CommandContext("c1", "erase_pstore")
    result = pstore.erase_pstore({}, [], ctx, **files(tmp_path, mounts_line(str(store))))
    assert result == {"pstore": {
        "mount_point": str(store), "mounted_by_agent": False, "count": 3, "bytes": total,
        "removed": sorted(RECORDS)}}
    assert os.listdir(store) == []
    snap = ctx.progress.snapshot()
    assert (snap["phase"], snap["done"], snap["total"], snap["unit"]) == (
        "erase_pstore", 3, 3, "files")


def test_mount_point_with_an_escaped_space_is_found(tmp_path):
    store = tmp_path / "sys fs" / "pstore"
    seed(store)
    result = pstore.erase_pstore({}, [], **files(tmp_path, mounts_line(str(store))))
    assert result["pstore"]["mount_point"] == str(store)
    assert result["pstore"]["count"] == 3 and os.listdir(store) == []


def test_nested_directories_are_emptied_too(tmp_path):
    store = tmp_path / "pstore"
    seed(store)
    seed(store / "sub", {"dmesg-erst-1": b"abc"})
    result = pstore.erase_pstore({}, [], **files(tmp_path, mounts_line(str(store))))
    assert result["pstore"]["count"] == 4
    assert "sub/dmesg-erst-1" in result["pstore"]["removed"]
    assert os.listdir(store) == []


def test_symlinks_are_removed_not_followed(tmp_path):
    store = tmp_path / "pstore"
    outside = tmp_path / "outside"
    seed(store, {})
    seed(outside, {"keep": b"data"})
    os.symlink(outside, store / "link")
    result = pstore.erase_pstore({}, [], **files(tmp_path, mounts_line(str(store))))
    assert result["pstore"]["removed"] == ["link"]
    assert (outside / "keep").read_bytes() == b"data"


def test_empty_pstore_succeeds_with_nothing_removed(tmp_path):
    store = tmp_path / "pstore"
    store.mkdir()
    result = pstore.erase_pstore({}, [], **files(tmp_path, mounts_line(str(store))))
    assert result["pstore"]["count"] == 0 and result["pstore"]["removed"] == []


def test_a_kernel_without_pstore_succeeds_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(pstore, "_mount_pstore", lambda target: pytest.fail("mounted"))
    result = pstore.erase_pstore({}, [], **files(tmp_path, "sysfs /sys sysfs rw 0 0\n",
                                                 FILESYSTEMS_WITHOUT))
    assert result["pstore"]["mount_point"] is None
    assert result["pstore"]["count"] == 0
    assert "no pstore filesystem" in result["pstore"]["note"]


def test_many_records_are_counted_past_the_name_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(pstore, "MAX_NAMES", 2)
    store = tmp_path / "pstore"
    seed(store)
    result = pstore.erase_pstore({}, [], **files(tmp_path, mounts_line(str(store))))
    assert result["pstore"]["count"] == 3 and len(result["pstore"]["removed"]) == 2
    assert result["pstore"]["names_omitted"] == 1


def test_cancel_stops_before_the_next_record(tmp_path):
    store = tmp_path / "pstore"
    seed(store)
    ctx = CommandContext("c1", "erase_pstore")
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        pstore.erase_pstore({}, [], ctx, **files(tmp_path, mounts_line(str(store))))
    assert sorted(os.listdir(store)) == sorted(RECORDS)


def test_find_mount_ignores_other_filesystems(tmp_path):
    (tmp_path / "m").write_text("none /sys/fs/pstore-not pstorex rw 0 0\n"
                                "tmpfs /pstore tmpfs rw 0 0\n")
    assert pstore.find_mount(str(tmp_path / "m")) is None
    assert pstore.find_mount(str(tmp_path / "absent")) is None


def test_step_dict_is_ipas():
    assert pstore.CLEAN_STEPS == ({"step": "erase_pstore", "priority": 0,
                                   "interface": "deploy", "reboot_requested": False,
                                   "abortable": True},)
