"""The erase steps on real loop devices whose partitions an md array holds.

Two loop devices, each with a GPT, an ext4 partition and a holder partition
carrying a real md 1.2 superblock (the installed mdadm reads it).  The array
itself comes from a sysfs tree (``md_overlay``), because this kernel has no md
driver; ``mdadm --stop`` goes to a recorder for the same reason.  Everything
else is real: the usage checks on the live /proc, ``mdadm --zero-superblock``,
wipefs, the overwrite.
"""

from __future__ import annotations

import hashlib

import pytest

from agent.disk.partition_table import read_table
from agent.errors import UnsafeDevice
from agent.hardware import disks, erase, erase_guards, erase_metadata
from agent.hardware.erase_base import EraseOptions
from agent.hardware.raid import arrays
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import (
    LINUX,
    MIB,
    blkid_finds,
    expose,
    part,
    read_at,
    sh,
    signatures,
)
from tests.functional.hardware.md_overlay import overlay, superblock

pytestmark = requires_loop
RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
SIZE = 64 * MIB


def md_disk(make_loop) -> str:
    dev = make_loop(SIZE)
    sh("sgdisk", "-n", "1:2048:+8M", "-n", "2:0:+40M", "-t", f"1:{LINUX}", "-t",
       f"2:{RAID}", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    return dev


@pytest.fixture
def mirror(make_loop, tmp_path, monkeypatch):
    """(root, [loopA, loopB], stops): md127 "root" over loopAp2 + loopBp2."""
    loops = [md_disk(make_loop), md_disk(make_loop)]
    members = [part(d, 2) for d in loops]
    for number, member in enumerate(members):
        superblock(member, number, len(members))
        assert "linux_raid_member" in signatures(member)
        assert "Name : any:root" in sh("mdadm", "--examine", member).stdout
    root = overlay(tmp_path / "tree", loops, members)
    stops: list[str] = []
    monkeypatch.setattr(arrays, "stop", lambda array: stops.append(array.device))
    return root, loops, stops


def listing(root) -> list:
    return disks.list_disks(str(root), include_loop=True)


def digest(dev: str) -> str:
    with open(dev, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def no_superblock(member: str) -> bool:
    proc = sh("mdadm", "--examine", member, check=False)
    return proc.returncode != 0 and "No md superblock detected" in proc.stderr


def test_the_tree_shows_the_array_over_the_real_partitions(mirror):
    root, loops, _ = mirror
    assert sorted(d.name for d in listing(root)) == sorted([*loops, "/dev/md127"])
    [md] = arrays.list_arrays(str(root))
    assert md.members == tuple(part(d, 2) for d in loops)
    assert md.member_disks == tuple(loops) and md.volume_name == "root"


def test_the_guard_without_the_array_plan_refuses_as_the_old_code_did(mirror):
    # before arrays were understood, plan() asked refusal_reasons with nothing to
    # stop: every member disk was refused because md127 holds its partition
    root, loops, _ = mirror
    disk = next(d for d in listing(root) if d.name == loops[0])
    usage = erase_guards.UsageSnapshot(str(root))
    assert erase_guards.refusal_reasons(disk, usage, guard_shared=True) == [
        f"{part(loops[0], 2)} is held by md RAID /dev/md127 (raid1)"]


def test_metadata_erase_stops_zeroes_and_wipes_the_members(mirror, monkeypatch):
    root, loops, stops = mirror
    ranges = {d: [(e.start_bytes, e.size_bytes) for e in read_table(d).partitions]
              for d in loops}
    seen_before_wipe = []
    real_wipe = erase_metadata.erase_metadata

    def wipe(disk):
        # by the time the first disk is wiped, the array is stopped and every
        # member's superblock is gone (mdadm itself says so)
        seen_before_wipe.append((list(stops), [no_superblock(part(d, 2)) for d in loops]))
        return real_wipe(disk)
    monkeypatch.setattr(erase, "erase_metadata", wipe)

    result = erase.erase_devices_metadata(listing(root), {}, EraseOptions(), root=str(root))

    assert stops == ["/dev/md127"]
    assert len(seen_before_wipe) == 2
    assert seen_before_wipe[0] == (["/dev/md127"], [True, True])
    assert result["arrays_stopped"] == ["/dev/md127"]
    assert set(result["erased"]) == set(loops) and result["skipped"] == {}
    for dev in loops:
        assert signatures(dev) == "" and blkid_finds(dev) == ""
        for start, size in ranges[dev]:
            assert blkid_finds(dev, start, size) == "", f"signature left on {dev} at {start}"
        assert read_at(dev, 0, MIB) == bytes(MIB)


def test_erase_devices_overwrites_the_members_after_stopping(mirror):
    root, loops, stops = mirror
    result = erase.erase_devices(listing(root), {}, EraseOptions(nvme=False, ata=False,
                                                                 iterations=0, zeroize=True),
                                 root=str(root))
    assert stops == ["/dev/md127"] and result["arrays_stopped"] == ["/dev/md127"]
    for dev in loops:
        assert read_at(dev, 0, SIZE) == bytes(SIZE)


def test_an_array_spanning_a_skipped_disk_is_refused_with_nothing_touched(mirror):
    root, loops, stops = mirror
    before = {d: digest(d) for d in loops}
    node = {"properties": {"skip_block_devices": [{"name": loops[1]}]}}
    with pytest.raises(UnsafeDevice) as exc:
        erase.erase_devices_metadata(listing(root), node, EraseOptions(), root=str(root))
    assert (f"md array /dev/md127 (root) also lies on {loops[1]} (listed in properties."
            f"skip_block_devices); stopping it to erase {loops[0]} would break it") \
        in exc.value.details
    assert stops == []
    assert {d: digest(d) for d in loops} == before
    assert not any(no_superblock(part(d, 2)) for d in loops)


def test_a_mounted_member_disk_partition_is_refused_before_the_stop(mirror, tmp_path):
    root, loops, stops = mirror
    point = tmp_path / "mnt"
    point.mkdir()
    sh("mount", part(loops[0], 1), str(point))
    try:
        with pytest.raises(UnsafeDevice) as exc:
            erase.erase_devices_metadata(listing(root), {}, EraseOptions(), root=str(root))
    finally:
        sh("umount", str(point))
    assert f"{part(loops[0], 1)} is mounted on {point}" in exc.value.details
    assert stops == [] and not any(no_superblock(part(d, 2)) for d in loops)
