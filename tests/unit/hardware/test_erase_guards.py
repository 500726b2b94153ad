"""The erase guards' reasons, from sysfs/procfs-shaped trees (md and dm are absent here)."""

from __future__ import annotations

import os
import stat

from agent.hardware import erase_guards
from agent.hardware.disks import Disk, Partition
from tests.unit.hardware.fake_sysfs import server_tree, write

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
"""


def test_every_use_of_disk_and_partitions_is_a_reason(tmp_path):
    # mount/swap/open parsing itself is tested in tests/unit/disk/test_usage.py
    root = server_tree(tmp_path)
    sdc = (root / "sys/block/sdc").resolve()
    sda = (root / "sys/block/sda").resolve()
    (sda / "sda2" / "holders").mkdir(parents=True)
    dm = (root / "sys/block/dm-0").resolve()
    os.symlink(os.path.relpath(dm, sda / "sda2" / "holders"), sda / "sda2" / "holders" / "dm-0")
    write(root / "proc/self/mountinfo", MOUNTINFO)
    (root / "dev").mkdir()
    os.mknod(root / "dev/sda", 0o600 | stat.S_IFBLK, os.makedev(8, 0))
    os.mknod(root / "dev/sda3", 0o600 | stat.S_IFBLK, os.makedev(8, 3))
    write(root / "proc/swaps", "Filename Type Size Used Priority\n"
                               "/dev/sda3 partition 8 0 -2\n")
    for pid, comm in ((77, "dd"), (78, "systemd-udevd")):
        (root / f"proc/{pid}/fd").mkdir(parents=True)
        write(root / f"proc/{pid}/comm", comm + "\n")
        os.symlink(root / "dev/sda", root / f"proc/{pid}/fd/4")
    usage = erase_guards.UsageSnapshot(str(root))

    member = Disk(name="/dev/sdc", size=1, devno=(8, 32), sysfs_path=str(sdc))
    assert erase_guards.in_use_reasons(member, [], usage) == [
        "/dev/sdc is held by md RAID /dev/md0 (raid1)"]

    disk = Disk(name="/dev/sda", size=1, devno=(8, 0), sysfs_path=str(sda))
    parts = [Partition("/dev/sda1", (8, 1), 0, 1), Partition("/dev/sda2", (8, 2), 0, 1),
             Partition("/dev/sda3", (8, 3), 0, 1)]
    assert erase_guards.in_use_reasons(disk, parts, usage) == [
        "/dev/sda is open by process 77 (dd)", "/dev/sda1 is mounted on /boot",
        "/dev/sda2 is held by device-mapper /dev/dm-0 (LVM)", "/dev/sda3 is in use as swap"]


def test_unreadable_partition_table_is_logged_not_fatal(tmp_path, caplog):
    disk = Disk(name=str(tmp_path / "gone"), size=1)
    assert erase_guards.shared_san_reasons(disk, []) == []
    assert "cannot read the partition table" in caplog.text
