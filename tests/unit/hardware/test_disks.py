"""Disk listing from a sysfs-shaped tree: identity fields, filtering, by-path."""

from __future__ import annotations

import pytest

from agent.hardware import disks
from agent.hardware.disks import INVENTORY_FIELDS
from tests.unit.hardware.fake_sysfs import server_tree, write


@pytest.fixture
def root(tmp_path):
    return server_tree(tmp_path)


def by_name(found):
    return {d.name: d for d in found}


def test_lists_whole_disks_md_and_hides_members_and_noise(root):
    names = [d.name for d in disks.list_disks(str(root))]
    assert names == ["/dev/md0", "/dev/nvme0n1", "/dev/sda", "/dev/sdb"]


def test_loop_devices_only_with_the_flag_and_only_non_empty(root):
    names = [d.name for d in disks.list_disks(str(root), include_loop=True)]
    assert "/dev/loop0" in names and "/dev/loop1" not in names
    loop = by_name(disks.list_disks(str(root), include_loop=True))["/dev/loop0"]
    assert loop.kind == "loop" and loop.by_path is None and loop.tran is None


def test_sata_disk_fields(root):
    sda = by_name(disks.list_disks(str(root)))["/dev/sda"]
    assert sda.to_dict() == {
        "name": "/dev/sda", "model": "Samsung SSD 860", "vendor": "ATA",
        "serial": "S3Z2NB0K123456A", "wwn": "0x5002538e40a1b2c3",
        "wwn_with_extension": "0x5002538e40a1b2c3", "wwn_vendor_extension": None,
        "size": 976773168 * 512, "rotational": False, "hctl": "2:0:0:0",
        "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-3",
        "logical_sectors": 512, "physical_sectors": 512, "tran": "sata"}
    assert sda.devno == (8, 0)


def test_scsi_lun_with_extended_naa_and_relative_host(root):
    sdb = by_name(disks.list_disks(str(root)))["/dev/sdb"]
    assert sdb.wwn == "0x6b8ca3a0e7f1e200"
    assert sdb.wwn_vendor_extension == "0x2a1b2c3d4e5f6071"
    assert sdb.wwn_with_extension == "0x6b8ca3a0e7f1e2002a1b2c3d4e5f6071"
    assert sdb.hctl == "0:2:0:0"
    assert sdb.by_path == "/dev/disk/by-path/pci-0000:18:00.0-scsi-0:2:0:0"
    assert sdb.rotational is True and sdb.physical_sectors == 4096
    assert sdb.tran is None and sdb.vendor == "DELL"


def test_nvme_namespace(root):
    nvme = by_name(disks.list_disks(str(root)))["/dev/nvme0n1"]
    assert nvme.tran == "nvme"
    assert nvme.serial == "PHLJ9123004T1P0FGN"
    assert nvme.model == "INTEL SSDPE2KX010T8"
    assert nvme.wwn == "eui.0025388b91c2d3e4"
    assert nvme.hctl is None
    assert nvme.by_path == "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1"


def test_every_disk_carries_every_inventory_key(root):
    found = disks.list_disks(str(root))
    assert [d.name for d in found] == ["/dev/md0", "/dev/nvme0n1", "/dev/sda", "/dev/sdb"]
    for disk in found:
        assert tuple(disk.to_dict()) == INVENTORY_FIELDS


def test_udev_database_wins_when_present(root):
    write(root / "run/udev/data/b8:0",
          "S:disk/by-id/ata-Samsung_SSD_860_S3Z2NB0K123456A\n"
          "S:disk/by-path/pci-0000:00:17.0-ata-3.0\n"
          "E:ID_SERIAL=Samsung_SSD_860_EVO_500GB_S3Z2NB0K123456A\n"
          "E:ID_SERIAL_SHORT=S3Z2NB0K123456A\n"
          "E:ID_WWN=0x5002538e40a1b2c3\n")
    sda = by_name(disks.list_disks(str(root)))["/dev/sda"]
    assert sda.by_path == "/dev/disk/by-path/pci-0000:00:17.0-ata-3.0"
    assert sda.serials == ("S3Z2NB0K123456A", "Samsung_SSD_860_EVO_500GB_S3Z2NB0K123456A")
    assert "Samsung_SSD_860_EVO_500GB_S3Z2NB0K123456A" in sda.hint_values("serial")


@pytest.mark.parametrize("wwid, expected", [
    ("naa.5000c500a1b2c3d4", ("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None)),
    ("naa.600508B1001C4D5E6F708192A3B4C5D6",
     ("0x600508b1001c4d5e", "0x600508b1001c4d5e6f708192a3b4c5d6", "0x6f708192a3b4c5d6")),
    ("eui.0025388b91c2d3e4", ("eui.0025388b91c2d3e4",) * 2 + (None,)),
    ("t10.ATA     QEMU HARDDISK", (None, None, None)),
    (None, (None, None, None)),
])
def test_parse_wwid(wwid, expected):
    assert disks.parse_wwid(wwid) == expected


def test_partitions_from_sysfs(root):
    sda_dir = (root / "sys/block/sda").resolve()
    write(sda_dir / "sda1" / "partition", "1\n")
    write(sda_dir / "sda1" / "dev", "8:1\n")
    write(sda_dir / "sda1" / "start", "2048\n")
    write(sda_dir / "sda1" / "size", "1048576\n")
    sda = by_name(disks.list_disks(str(root)))["/dev/sda"]
    parts = disks.list_partitions(sda)
    assert [(p.name, p.devno, p.start, p.size) for p in parts] == [
        ("/dev/sda1", (8, 1), 2048 * 512, 1048576 * 512)]
