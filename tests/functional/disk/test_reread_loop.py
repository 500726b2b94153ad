"""Kernel re-read on real loop devices: BLKRRPART, the BLKPG fallback, nodes, holders."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile

import pytest

from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import DeploymentError
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1024 * 1024


def sfdisk(dev: str, script: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", dev], input=script,
                   check=True, capture_output=True, text=True)


def sysfs(dev: str) -> dict[str, tuple[int, int]]:
    name = os.path.basename(dev)
    out = {}
    for entry in os.listdir(f"/sys/block/{name}"):
        base = f"/sys/block/{name}/{entry}"
        if os.path.exists(f"{base}/partition"):
            with open(f"{base}/start") as s, open(f"{base}/size") as z:
                out[entry] = (int(s.read()) * 512, int(z.read()) * 512)
    return out


def assert_matches_table(dev: str, result: reread.RereadResult) -> None:
    table = pt.read_table(dev)
    name = os.path.basename(dev)
    want = {f"{name}p{p.number}": (p.start_bytes, p.size_bytes) for p in table.partitions
            if p.mbr_role != "extended"}
    got = {k: v for k, v in sysfs(dev).items() if k in want}
    assert got == want
    assert sorted(result.partitions) == [p.number for p in table.partitions]
    for number, node in result.partitions.items():
        st = os.stat(node)
        with open(f"/sys/class/block/{os.path.basename(node)}/dev") as f:
            major, minor = map(int, f.read().split(":"))
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(major, minor)
        assert node == reread.partition_device(dev, number)
        assert reread.partition_parent(node) == (dev, number)


@pytest.fixture
def partscan_loop(tmp_path):
    """A loop device with partition scanning on, the way real disks behave."""
    backing = tmp_path / "scan.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "-f", "--show", "-P", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    yield dev
    subprocess.run(["partx", "-d", dev], capture_output=True)
    subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_blkpg_adds_exactly_the_table(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\nsize=4096\nsize=2048\n")
    result = reread.reread(dev)
    # a loop device without partscan refuses BLKRRPART; BLKPG still works
    assert result.method == "blkpg"
    assert "Invalid argument" in (result.blkrrpart_error or "")
    assert set(result.timings) == {"blkrrpart", "blkpg", "wait", "total"}
    assert_matches_table(dev, result)


def test_partscan_loop(partscan_loop):
    sfdisk(partscan_loop, "label: dos\nstart=2048, size=8192, type=83\nsize=4096, type=82\n")
    result = reread.reread(partscan_loop)
    assert result.blkrrpart_error is None and result.attempts == 1
    # 'kernel' where the kernel parses MBR itself, 'blkpg' on kernels without parsers
    assert result.method in ("kernel", "blkpg")
    assert_matches_table(partscan_loop, result)


def test_second_reread_changes_nothing(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\n")
    reread.reread(dev)
    again = reread.reread(dev)
    assert again.method in ("unchanged", "kernel") and "blkpg" not in again.timings
    assert_matches_table(dev, again)


def test_stale_and_moved_partitions_are_replaced(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\nsize=4096\nsize=2048\n")
    reread.reread(dev)
    sfdisk(dev, "label: gpt\nstart=4096, size=2048\nsize=2048\n")
    result = reread.reread(dev)
    assert sorted(result.partitions) == [1, 2]
    assert not os.path.exists(f"{dev}p3")
    assert_matches_table(dev, result)


def test_mbr_logical_and_extended(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: dos\nstart=2048, size=2048, type=83\nstart=4096, size=40960, "
                "type=5\nstart=6144, size=2048, type=83\nstart=10240, size=2048, type=82\n")
    result = reread.reread(dev)
    assert sorted(result.partitions) == [1, 2, 5, 6]
    name = os.path.basename(dev)
    # like the kernel's own parser, the extended partition is exposed as 1 KiB only
    assert sysfs(dev)[f"{name}p2"] == (4096 * 512, 1024)
    assert_matches_table(dev, result)


def test_4k_sectors(make_loop):
    dev = make_loop(64 * MiB, sector_size=4096)
    sfdisk(dev, "label: gpt\nstart=256, size=2048\nsize=1024\n")
    table = pt.read_table(dev)
    assert table.sector_size == 4096 and table.partitions[0].start_bytes == MiB
    result = reread.reread(dev)
    assert_matches_table(dev, result)
    assert sysfs(dev)[f"{os.path.basename(dev)}p1"] == (MiB, 8 * MiB)


def test_empty_table_removes_all_partitions(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\n")
    reread.reread(dev)
    sfdisk(dev, "label: gpt\n")
    result = reread.reread(dev)
    assert result.partitions == {} and sysfs(dev) == {}


def test_creates_nodes_without_udev_or_devtmpfs(make_loop, tmp_path, monkeypatch):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\nsize=4096\n")
    fake_dev = tmp_path / "dev"
    fake_dev.mkdir()
    name = os.path.basename(dev)
    os.mknod(fake_dev / f"{name}p1", 0o600 | stat.S_IFBLK, os.makedev(1, 3))   # stale
    monkeypatch.setattr(reread, "DEV", str(fake_dev))
    result = reread.reread(dev)
    assert result.partitions == {1: str(fake_dev / f"{name}p1"),
                                 2: str(fake_dev / f"{name}p2")}
    for node in result.partitions.values():
        with open(f"/sys/class/block/{os.path.basename(node)}/dev") as f:
            major, minor = map(int, f.read().split(":"))
        st = os.stat(node)
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(major, minor)


def test_mounted_partition_is_named_as_the_holder(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=16384\nsize=8192\n")
    part = reread.reread(dev).partitions[1]
    subprocess.run(["mkfs.ext4", "-q", part], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", part, mnt], check=True, capture_output=True)
        try:
            assert f"{part} is mounted on {mnt}" in reread.holders(dev)
            sfdisk(dev, "label: gpt\nstart=4096, size=8192\n")     # moves partition 1
            with pytest.raises(DeploymentError) as exc:
                reread.reread(dev, timeout=5)
            assert f"removing stale partition {os.path.basename(part)}" in exc.value.details
            assert f"{part} is mounted on {mnt}" in exc.value.details
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
    result = reread.reread(dev)
    assert_matches_table(dev, result)


def test_open_partition_names_the_process(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=8192\nsize=8192\n")
    part = reread.reread(dev).partitions[2]
    with open(part, "rb") as handle:
        proc = subprocess.Popen(["sleep", "60"], stdin=handle)
    try:
        sfdisk(dev, "label: gpt\nstart=2048, size=8192\n")
        with pytest.raises(DeploymentError) as exc:
            reread.reread(dev, timeout=5)
        assert f"{part} is open by process {proc.pid} (sleep)" in exc.value.details
    finally:
        proc.kill()
        proc.wait()


def test_busy_disk_keeps_mounted_partition_and_adds_new_one(partscan_loop):
    sfdisk(partscan_loop, "label: gpt\nstart=2048, size=16384\n")
    part = reread.reread(partscan_loop).partitions[1]
    subprocess.run(["mkfs.ext4", "-q", part], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", part, mnt], check=True, capture_output=True)
        try:
            subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--append",
                            partscan_loop], input="size=8192\n", text=True, check=True,
                           capture_output=True)
            result = reread.reread(partscan_loop)
            # the kernel refuses while p1 is mounted; BLKPG adds p2 next to it
            assert "Device or resource busy" in result.blkrrpart_error
            assert result.attempts == reread.EBUSY_RETRIES and result.method == "blkpg"
            assert_matches_table(partscan_loop, result)
            assert os.path.ismount(mnt)
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
