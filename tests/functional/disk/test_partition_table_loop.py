"""The table reader on loop devices with 4096-byte logical sectors."""

from __future__ import annotations

import subprocess

from agent.disk import partition_table as pt
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1024 * 1024


def backing_file(dev: str) -> str:
    return subprocess.run(["losetup", "-n", "-O", "BACK-FILE", dev], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_gpt_on_4k_sectors_from_device_and_image_file(make_loop):
    dev = make_loop(64 * MiB, sector_size=4096)
    subprocess.run(["sgdisk", "-n", "1:1M:+8M", "-c", "1:root", "-n", "2:0:+4M",
                    "-t", "2:ef00", dev], check=True, capture_output=True)
    subprocess.run(["sync"], check=True)
    for source in (dev, backing_file(dev)):       # ioctl on one, auto-detection on the other
        table = pt.read_table(source)
        assert table.sector_size == 4096 and table.kind == "gpt" and table.ok
        root, esp = table.partitions
        assert (root.first_lba, root.start_bytes, root.size_bytes) == (256, MiB, 8 * MiB)
        assert esp.type_guid == pt.ESP_GUID and esp.start_bytes == 9 * MiB
        assert table.backup_lba == 64 * MiB // 4096 - 1


def test_corrupt_primary_on_4k_sectors(make_loop):
    dev = make_loop(64 * MiB, sector_size=4096)
    subprocess.run(["sgdisk", "-n", "1:1M:+8M", dev], check=True, capture_output=True)
    with open(dev, "r+b") as f:
        f.seek(4096 + 40)
        f.write(b"\xee")
    table = pt.read_table(dev)
    assert not table.primary_ok and table.backup_ok
    assert table.partitions[0].start_bytes == MiB


def test_mbr_on_4k_sectors(make_loop):
    dev = make_loop(64 * MiB, sector_size=4096)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev], check=True,
                   input="label: dos\nstart=256, size=1024, type=83\n", text=True,
                   capture_output=True)
    table = pt.read_table(dev)
    assert table.kind == "mbr" and table.sector_size == 4096
    assert table.partitions[0].start_bytes == MiB
    assert table.partitions[0].size_bytes == 4 * MiB
