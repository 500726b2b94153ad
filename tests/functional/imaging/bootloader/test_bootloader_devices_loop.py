"""Finding partitions by the UUID forms the conductor sends, on real loop disks."""

from __future__ import annotations

import os

import pytest

from agent.errors import DeviceNotFound
from agent.imaging.bootloader import devices
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs

pytestmark = requires_loop
MIB = rootfs.MIB


def test_mbr_partuuid_gpt_guid_and_filesystem_uuid_all_match(make_loop):
    mbr = make_loop(32 * MIB)
    rootfs.sh("sfdisk", "-q", mbr, input="label: dos\nlabel-id: 0xdeadbeef\n"
              "start=2048, size=8192, type=41\nstart=10240, type=83\n")
    rootfs.expose(mbr)
    view = devices.DiskView(mbr)
    assert view.by_uuid("DEADBEEF-02").node == rootfs.part(mbr, 2)
    uuid = rootfs.fill_ext4(rootfs.part(mbr, 2), lambda mnt: None)
    assert devices.DiskView(mbr).by_uuid(uuid.upper()).number == 2
    assert view.by_uuid("deadbeef-03") is None

    gpt = make_loop(32 * MIB)
    nodes = rootfs.gpt(gpt, [(4, rootfs.PREP_TYPE), (0, rootfs.LINUX_TYPE)])
    guid = rootfs.sh("blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID",
                     nodes[0]).stdout.strip()
    view = devices.DiskView(gpt)
    assert view.by_uuid(guid.upper()).node == nodes[0]
    assert [p.node for p in view.by_type(rootfs.PREP_TYPE.lower(), 0x41)] == [nodes[0]]


def test_missing_partition_nodes_are_created_from_the_table(make_loop):
    dev = make_loop(32 * MIB)
    rootfs.sh("sgdisk", "-n", "1:0:+4M", "-n", "2:0:0", dev)   # no partx: no nodes yet
    assert not os.path.exists(rootfs.part(dev, 2))
    view = devices.DiskView(dev)
    assert [p.node for p in view.partitions] == [rootfs.part(dev, 1), rootfs.part(dev, 2)]
    assert all(os.path.exists(p.node) for p in view.partitions)


def test_root_outside_the_install_disk_is_found_anywhere(make_loop):
    disk = make_loop(32 * MIB)
    rootfs.gpt(disk, [(0, rootfs.LINUX_TYPE)])
    other = make_loop(32 * MIB)        # stands in for an md or LVM device holding the root
    rootfs.sh("mkfs.ext4", "-q", "-F", other)
    uuid = rootfs.fs_uuid(other)
    assert devices.find_root(devices.DiskView(disk), uuid) == other


def test_unknown_root_and_blank_disk_are_device_not_found(make_loop):
    dev = make_loop(32 * MIB)
    with pytest.raises(DeviceNotFound, match=f"{dev} has no partition table"):
        devices.DiskView(dev)
    rootfs.msdos(dev, ["start=2048, type=83"])
    with pytest.raises(DeviceNotFound, match=f"No partition with UUID nope was found on {dev} "
                                             "or any other block device; partitions of"):
        devices.find_root(devices.DiskView(dev), "nope")

