"""Partition-image layouts on real loop devices: UEFI, BIOS and ppc64le, plus UUIDs."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import DeploymentError, InvalidCommandParamsError
from agent.imaging import configdrive as cd
from agent.imaging import partition_image as pi
from tests.conftest import requires_loop
from tests.functional.imaging.test_configdrive_loop import (
    CONTENT,
    assert_cloud_init_sees_content,
    blkid,
)

pytestmark = requires_loop
MiB = 1024 * 1024


def table_digest(dev: str) -> str:
    with open(dev, "rb") as f:
        return hashlib.sha256(f.read(MiB)).hexdigest()


def by_node(dev: str, layout: dict[str, str]) -> dict[str, pt.Partition]:
    table = pt.read_table(dev)
    return {key: table.get(reread.partition_parent(node)[1]) for key, node in layout.items()}


def test_uefi_gpt_layout(make_loop):
    dev = make_loop(640 * MiB)
    drive = cd.decode_configdrive(CONTENT)
    layout = pi.create_layout(dev, root_mb=32, swap_mb=8, ephemeral_mb=16,
                              boot_mode="uefi", configdrive_size=len(drive))
    assert list(layout) == [pi.ESP, pi.EPHEMERAL, pi.SWAP, pi.CONFIGDRIVE, pi.ROOT]
    assert layout[pi.ROOT] == f"{dev}p5"
    parts = by_node(dev, layout)
    assert parts[pi.ESP].type_guid == pt.ESP_GUID and parts[pi.ESP].size_bytes == 550 * MiB
    assert parts[pi.SWAP].type_guid == pt.LINUX_SWAP_GUID
    assert parts[pi.CONFIGDRIVE].name == "config-v2"
    assert parts[pi.ROOT].start_bytes == max(p.start_bytes for p in parts.values())
    assert parts[pi.ROOT].size_bytes == 32 * MiB

    esp, swap, eph = blkid(layout[pi.ESP]), blkid(layout[pi.SWAP]), blkid(layout[pi.EPHEMERAL])
    assert (esp["TYPE"], esp["VERSION"], esp["LABEL"]) == ("vfat", "FAT32", "EFI-PART")
    assert (swap["TYPE"], swap["LABEL"]) == ("swap", "swap1")
    assert (eph["TYPE"], eph["LABEL"]) == ("ext4", "ephemeral0")
    assert "TYPE" not in blkid(layout[pi.ROOT])

    uuids = pi.partition_uuids(layout)
    assert uuids["root uuid"] == parts[pi.ROOT].unique_guid      # no filesystem yet
    assert uuids["efi system partition uuid"] == esp["UUID"]
    assert uuids["partitions"] == layout and "PReP Boot partition uuid" not in uuids

    # the lead streams the root image; a filesystem there gives the filesystem UUID
    subprocess.run(["mkfs.ext4", "-q", layout[pi.ROOT]], check=True, capture_output=True)
    assert pi.partition_uuids(layout)["root uuid"] == blkid(layout[pi.ROOT])["UUID"]

    result = cd.write_configdrive(dev, drive, partition=layout[pi.CONFIGDRIVE])
    assert result["created"] is False and result["partition"] == layout[pi.CONFIGDRIVE]
    assert assert_cloud_init_sees_content(dev) == layout[pi.CONFIGDRIVE]


def test_bios_gpt_layout(make_loop):
    dev = make_loop(64 * MiB)
    layout = pi.create_layout(dev, root_mb=0, swap_mb=4, boot_mode="bios", disk_label="gpt")
    assert list(layout) == [pi.BIOS_BOOT, pi.SWAP, pi.ROOT]
    parts = by_node(dev, layout)
    assert parts[pi.BIOS_BOOT].type_guid == pt.BIOS_BOOT_GUID
    assert parts[pi.BIOS_BOOT].size_bytes == MiB
    assert parts[pi.ROOT].end_bytes > 62 * MiB          # root: the rest of the disk
    uuids = pi.partition_uuids(layout)
    assert uuids["efi system partition uuid"] is None
    assert uuids["root uuid"] == blkid(layout[pi.ROOT])["PART_ENTRY_UUID"]


def test_bios_msdos_layout(make_loop):
    dev = make_loop(64 * MiB)
    layout = pi.create_layout(dev, root_mb=16, ephemeral_mb=8, ephemeral_format="ext3")
    assert list(layout) == [pi.EPHEMERAL, pi.ROOT]
    table = pt.read_table(dev)
    assert table.kind == "mbr" and table.get(2).bootable and not table.get(1).bootable
    assert blkid(layout[pi.EPHEMERAL])["TYPE"] == "ext3"
    uuids = pi.partition_uuids(layout)
    assert uuids["root uuid"] == f"{table.disk_signature:08x}-02"
    assert uuids["root uuid"] == blkid(layout[pi.ROOT])["PART_ENTRY_UUID"]


def test_ppc64le_msdos_layout_uses_logical_partitions(make_loop):
    dev = make_loop(96 * MiB)
    layout = pi.create_layout(dev, root_mb=16, swap_mb=4, ephemeral_mb=8,
                              cpu_arch="ppc64le", configdrive_size=MiB)
    assert list(layout) == [pi.PREP, pi.EPHEMERAL, pi.SWAP, pi.CONFIGDRIVE, pi.ROOT]
    assert [reread.partition_parent(n)[1] for n in layout.values()] == [1, 2, 3, 5, 6]
    parts = by_node(dev, layout)
    prep = parts[pi.PREP]
    assert prep.mbr_type == pt.MBR_PREP and prep.bootable and prep.size_bytes == 8 * MiB
    table = pt.read_table(dev)
    uuids = pi.partition_uuids(layout)
    assert uuids["PReP Boot partition uuid"] == f"{table.disk_signature:08x}-01"
    assert uuids["PReP Boot partition uuid"] == blkid(layout[pi.PREP])["PART_ENTRY_UUID"]
    assert uuids["efi system partition uuid"] is None


def test_ppc64le_gpt_layout(make_loop):
    dev = make_loop(64 * MiB)
    layout = pi.create_layout(dev, root_mb=16, cpu_arch="ppc64le", disk_label="gpt")
    parts = by_node(dev, layout)
    assert parts[pi.PREP].type_guid == pt.PREP_GUID
    uuids = pi.partition_uuids(layout)
    assert uuids["PReP Boot partition uuid"] == parts[pi.PREP].unique_guid


def test_uefi_layout_on_4k_sectors(make_loop):
    dev = make_loop(640 * MiB, sector_size=4096)
    layout = pi.create_layout(dev, root_mb=16, boot_mode="uefi")
    table = pt.read_table(dev)
    assert table.sector_size == 4096 and table.ok
    esp = blkid(layout[pi.ESP])
    assert esp["TYPE"] == "vfat" and esp["BLOCK_SIZE"] == "4096"
    assert pi.partition_uuids(layout)["efi system partition uuid"] == esp["UUID"]


def test_stale_signatures_are_wiped(make_loop):
    dev = make_loop(64 * MiB)
    first = pi.create_layout(dev, root_mb=16, ephemeral_mb=8)
    assert blkid(first[pi.EPHEMERAL])["TYPE"] == "ext4"
    second = pi.create_layout(dev, root_mb=0, disk_label="gpt")
    # the BIOS boot partition now starts where the ext4 did; it must look empty
    assert reread.partition_parent(second[pi.BIOS_BOOT])[1] == 1
    assert "TYPE" not in blkid(second[pi.BIOS_BOOT])


def test_preserve_ephemeral(make_loop):
    dev = make_loop(64 * MiB)
    layout = pi.create_layout(dev, root_mb=16, ephemeral_mb=16, disk_label="gpt")
    kept = blkid(layout[pi.EPHEMERAL])["UUID"]
    again = pi.create_layout(dev, root_mb=16, ephemeral_mb=16, disk_label="gpt",
                             preserve_ephemeral=True)
    assert blkid(again[pi.EPHEMERAL])["UUID"] == kept
    before = table_digest(dev)
    with pytest.raises(DeploymentError, match="preserve_ephemeral is set but"):
        pi.create_layout(dev, root_mb=16, ephemeral_mb=8, disk_label="gpt",
                         preserve_ephemeral=True)
    assert table_digest(dev) == before


def test_layout_that_does_not_fit_touches_nothing(make_loop):
    dev = make_loop(64 * MiB)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev],
                   input="label: dos\nstart=2048, size=8192, type=83\n", text=True,
                   check=True, capture_output=True)
    before = table_digest(dev)
    with pytest.raises(DeploymentError, match="the layout needs"):
        pi.create_layout(dev, root_mb=32, boot_mode="uefi")
    with pytest.raises(InvalidCommandParamsError, match="ephemeral_format 'zfs'"):
        pi.create_layout(dev, root_mb=8, ephemeral_mb=8, ephemeral_format="zfs")
    assert table_digest(dev) == before
    assert os.path.exists(dev)
