"""In-use detection from sysfs/procfs-shaped trees (md and dm are absent here)."""

from __future__ import annotations

import os

from agent.hardware import erase_guards
from agent.hardware.disks import Disk, Partition
from tests.unit.hardware.fake_sysfs import server_tree, write

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
"""


def test_mountinfo_devnos(tmp_path):
    write(tmp_path / "proc/self/mountinfo", MOUNTINFO)
    assert erase_guards.mounted_devnos(str(tmp_path)) == {(0, 21), (254, 0), (8, 1)}


def test_open_devnos_skips_what_cannot_be_read(tmp_path):
    real_block = next(os.path.join("/dev", n) for n in sorted(os.listdir("/sys/block"))
                      if os.path.exists(os.path.join("/dev", n)))
    st = os.stat(real_block)
    fd_dir = tmp_path / "proc/4242/fd"
    fd_dir.mkdir(parents=True)
    write(tmp_path / "proc/4242/comm", "qemu-img\n")
    os.symlink(real_block, fd_dir / "5")
    os.symlink("/dev/null", fd_dir / "0")                     # not a block device
    os.symlink("/nonexistent/gone", fd_dir / "7")             # vanished: skipped
    write(tmp_path / "proc/4343/fd", "not a directory")        # unreadable: skipped
    udev = tmp_path / "proc/99/fd"                              # udev probing after a write
    udev.mkdir(parents=True)
    write(tmp_path / "proc/99/comm", "(udev-worker)\n")
    os.symlink(real_block, udev / "9")
    (tmp_path / "proc/self").mkdir()
    found = erase_guards.open_devnos(str(tmp_path))
    assert found == {(os.major(st.st_rdev), os.minor(st.st_rdev)): {"4242 (qemu-img)"}}


def test_holders_of_disk_and_partition_are_reasons(tmp_path):
    root = server_tree(tmp_path)
    sdc = (root / "sys/block/sdc").resolve()
    sda = (root / "sys/block/sda").resolve()
    (sda / "sda2" / "holders").mkdir(parents=True)
    os.symlink("../../../../../../../../virtual/block/dm-0", sda / "sda2" / "holders" / "dm-0")
    usage = erase_guards.UsageSnapshot.__new__(erase_guards.UsageSnapshot)
    usage.mounted, usage.swaps, usage.opened = {(8, 1)}, {(8, 3)}, {(8, 0): {"77 (dd)"}}

    member = Disk(name="/dev/sdc", size=1, devno=(8, 64), sysfs_path=str(sdc))
    assert erase_guards.in_use_reasons(member, [], usage) == ["/dev/sdc is held by md0"]

    disk = Disk(name="/dev/sda", size=1, devno=(8, 0), sysfs_path=str(sda))
    parts = [Partition("/dev/sda1", (8, 1), 0, 1), Partition("/dev/sda2", (8, 2), 0, 1),
             Partition("/dev/sda3", (8, 3), 0, 1)]
    assert erase_guards.in_use_reasons(disk, parts, usage) == [
        "/dev/sda is open by process 77 (dd)", "/dev/sda1 is mounted",
        "/dev/sda2 is held by dm-0", "/dev/sda3 is active swap"]


def test_unreadable_partition_table_is_logged_not_fatal(tmp_path, caplog):
    disk = Disk(name=str(tmp_path / "gone"), size=1)
    assert erase_guards.shared_san_reasons(disk, []) == []
    assert "cannot read the partition table" in caplog.text
