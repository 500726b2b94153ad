"""erase_devices_metadata on real loop devices carrying real signatures.

Afterwards neither wipefs nor ``blkid -p`` may find anything: not on the
disk, not on the partition nodes (added through BLKPG), and not in the old
partition ranges probed on the disk itself.
"""

from __future__ import annotations

import os

import pytest

from agent.disk.partition_table import read_table
from agent.errors import CleaningError
from agent.hardware import erase, erase_metadata
from agent.hardware.disks import list_partitions
from agent.hardware.erase_base import EraseOptions
from agent.progress import Progress
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import (
    LINUX,
    MIB,
    blkid_finds,
    expose,
    loop_disk,
    part,
    read_at,
    sh,
    signatures,
)

pytestmark = requires_loop


def assert_clean(dev: str, ranges: list[tuple[int, int]], nodes: list[str]) -> None:
    assert signatures(dev) == "", f"wipefs still finds on {dev}: {signatures(dev)}"
    assert blkid_finds(dev) == ""
    for start, size in ranges:
        assert blkid_finds(dev, start, size) == "", f"signature left at offset {start}"
    for node in nodes:
        # the table is gone, so its partition nodes must be gone too; what they
        # held is checked through ``ranges`` on the disk itself
        assert not os.path.exists(node), f"{node} outlived the partition table"
    assert list_partitions(loop_disk(dev)) == []


def erase_only(dev: str) -> dict:
    # the disk list is given explicitly: no other loop device on this machine is touched
    return erase.erase_devices_metadata([loop_disk(dev)], {}, EraseOptions())


def test_gpt_with_ext4_xfs_and_lvm_partitions(make_loop):
    dev = make_loop(400 * MIB)
    sh("sgdisk", "-n", "1:2048:+16M", "-n", "2:0:+320M", "-n", "3:0:+16M",
       "-t", f"1:{LINUX}", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    sh("mkfs.xfs", "-q", "-f", part(dev, 2))
    sh("pvcreate", "-ff", "-y", part(dev, 3))
    before = signatures(dev)
    assert before.count("gpt") == 2 and "PMBR" in before     # both GPT copies present
    assert "ext4" in signatures(part(dev, 1)) and "xfs" in signatures(part(dev, 2))
    assert "LVM2_member" in signatures(part(dev, 3))
    ranges = [(e.start_bytes, e.size_bytes) for e in read_table(dev).partitions]

    result = erase_only(dev)

    assert result["erased"][dev] == "metadata erased (3 partition(s) wiped)"
    assert_clean(dev, ranges, [part(dev, n) for n in (1, 2, 3)])
    size = 400 * MIB
    assert read_at(dev, 0, MIB) == bytes(MIB)                # MBR + primary GPT
    assert read_at(dev, size - MIB, MIB) == bytes(MIB)       # backup GPT entries + header


def test_mbr_with_ext4_and_lvm(make_loop):
    dev = make_loop(64 * MIB)
    sh("sfdisk", dev, input="label: dos\nstart=2048, size=32768, type=83\n"
                            "start=34816, size=32768, type=8e\n")
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    sh("pvcreate", "-ff", "-y", part(dev, 2))
    assert "dos" in signatures(dev)
    ranges = [(e.start_bytes, e.size_bytes) for e in read_table(dev).partitions]

    erase_only(dev)

    assert_clean(dev, ranges, [part(dev, 1), part(dev, 2)])
    assert read_at(dev, 510, 2) == b"\0\0"                   # MBR boot signature gone


def test_partitions_the_kernel_does_not_show_are_wiped_too(make_loop):
    dev = make_loop(64 * MIB)
    sh("sgdisk", "-n", "1:2048:+24M", "-n", "2:0:+24M", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    sh("pvcreate", "-ff", "-y", part(dev, 2))
    sh("partx", "-d", dev)                   # as on a kernel without the GPT parser
    ranges = [(e.start_bytes, e.size_bytes) for e in read_table(dev).partitions]
    assert blkid_finds(dev, *ranges[0]) and blkid_finds(dev, *ranges[1])

    erase_only(dev)

    assert_clean(dev, ranges, [])
    # the temporary BLKPG nodes used for wiping are gone again
    assert list_partitions(loop_disk(dev)) == []


def test_whole_disk_filesystem_and_pv_without_table(make_loop):
    xfs = make_loop(320 * MIB)
    pv = make_loop(16 * MIB)
    sh("mkfs.xfs", "-q", "-f", xfs)
    sh("pvcreate", "-ff", "-y", pv)
    erase.erase_devices_metadata([loop_disk(xfs), loop_disk(pv)], {}, EraseOptions())
    assert_clean(xfs, [], [])
    assert_clean(pv, [], [])


def test_4k_sector_disk(make_loop):
    dev = make_loop(64 * MIB, sector_size=4096)
    sh("sgdisk", "-n", "1:256:+32M", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    entries = read_table(dev).partitions
    assert [(e.start_bytes, e.size_bytes) for e in entries] == [(MIB, 32 * MIB)]

    erase_only(dev)

    assert_clean(dev, [(MIB, 32 * MIB)], [part(dev, 1)])


class Ctx:
    def __init__(self):
        self.progress = Progress()

    def check_cancelled(self):
        pass


def test_progress_counts_devices(make_loop):
    count = 2
    devs = [make_loop(8 * MIB) for _ in range(count)]
    ctx = Ctx()
    erase.erase_devices_metadata([loop_disk(d) for d in devs], {}, EraseOptions(), ctx)
    snap = ctx.progress.snapshot()
    assert (snap["phase"], snap["done"], snap["total"], snap["unit"]) == (
        "erase_devices_metadata", count, count, "devices")


def test_express_on_a_loop_device_falls_back_to_the_metadata_wipe(make_loop):
    dev = make_loop(32 * MIB)
    sh("mkfs.ext4", "-q", "-F", dev)
    result = erase.erase_devices_express([loop_disk(dev)], {}, EraseOptions())
    assert result["erased"] == {dev: "metadata erased (0 partition(s) wiped)"}
    assert_clean(dev, [], [])


def test_signature_left_behind_fails_the_step(make_loop, monkeypatch):
    dev = make_loop(32 * MIB)
    with open(dev, "r+b") as f:                 # VMFS magic at 2 MiB: outside the zeroed edges
        f.seek(2 * MIB)
        f.write(b"\x5e\xf1\xab\x2f")
    monkeypatch.setattr(erase_metadata, "_wipe", lambda device: None)   # a wipefs that fails
    with pytest.raises(CleaningError, match=f"signatures remain on {dev} after wiping: .*VMFS"):
        erase_metadata.erase_metadata(loop_disk(dev))


def test_stale_kernel_partition_does_not_stop_the_wipe(make_loop, caplog):
    dev = make_loop(64 * MIB)
    sh("sgdisk", "-n", "1:2048:+24M", dev)
    expose(dev)                                  # the kernel now holds p1 at 1..25 MiB
    sh("sgdisk", "-Z", dev)
    sh("sgdisk", "-n", "1:4096:+24M", dev)       # a new, overlapping p1 at 2..26 MiB
    erase_only(dev)
    # both the stale kernel partition and the on-disk one were wiped
    assert_clean(dev, [(MIB, 24 * MIB), (2 * MIB, 24 * MIB)], [part(dev, 1)])
