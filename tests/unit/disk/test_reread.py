"""Device naming and argument checks of the re-read module (no disk changes)."""

from __future__ import annotations

import os

import pytest

from agent.disk import reread
from agent.errors import DeviceNotFound


@pytest.mark.parametrize("disk,number,expected", [
    ("/dev/sdzz", 1, "/dev/sdzz1"),
    ("/dev/vdzz", 12, "/dev/vdzz12"),
    ("/dev/nvme9n9", 1, "/dev/nvme9n9p1"),
    ("/dev/mmcblk9", 2, "/dev/mmcblk9p2"),
    ("/dev/loop99", 3, "/dev/loop99p3"),
])
def test_partition_device_naming(disk, number, expected):
    assert reread.partition_device(disk, number) == expected


def test_partition_device_follows_symlinks(tmp_path):
    link = tmp_path / "by-id-disk"
    os.symlink("/dev/nvme9n9", link)
    assert reread.partition_device(str(link), 4) == "/dev/nvme9n9p4"


def test_disk_name_rejects_unknown_device():
    with pytest.raises(DeviceNotFound, match="not a block device known to the kernel"):
        reread.disk_name("/dev/sdzz")


def test_partition_parent_rejects_non_partition():
    with pytest.raises(DeviceNotFound, match="not a partition"):
        reread.partition_parent("/dev/null")


def test_holders_of_unknown_disk_is_empty():
    assert reread.holders("/dev/sdzz") == []
