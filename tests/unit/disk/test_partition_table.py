"""Our GPT/MBR reader against images built by the real sgdisk and sfdisk."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from agent.disk import partition_table as pt

MiB = 1024 * 1024


def image(tmp_path, size_mib: int = 64, name: str = "disk.img") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    return path


def sgdisk(path: str, *args: str) -> str:
    return subprocess.run(["sgdisk", *args, path], check=True, capture_output=True,
                          text=True).stdout


def sfdisk(path: str, script: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", path], input=script,
                   check=True, capture_output=True, text=True)


def sgdisk_info(path: str, number: int) -> dict[str, str]:
    out = sgdisk(path, "-i", str(number))
    return dict(re.findall(r"^([^:\n]+): (.*)$", out, re.M))


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def gpt(tmp_path) -> str:
    path = image(tmp_path)
    sgdisk(path, "-n", "1:1M:+8M", "-c", "1:EFI System", "-t", "1:ef00",
           "-n", "2:0:+4M", "-c", "2:config-v2", "-A", "2:set:2",
           "-n", "5:0:+2M", "-t", "5:8200")
    return path


def test_gpt_matches_sgdisk(gpt):
    table = pt.read_table(gpt)
    assert table.kind == "gpt" and table.ok and table.problems == []
    assert table.sector_size == 512
    assert [p.number for p in table.partitions] == [1, 2, 5]
    for part in table.partitions:
        info = sgdisk_info(gpt, part.number)
        assert part.unique_guid == info["Partition unique GUID"].lower()
        assert part.type_guid == info["Partition GUID code"].split()[0].lower()
        assert part.first_lba == int(info["First sector"].split()[0])
        assert part.last_lba == int(info["Last sector"].split()[0])
        assert part.name == info["Partition name"].strip("'")
    esp, cfg, swap = table.partitions
    assert esp.type_guid == pt.ESP_GUID and esp.start_bytes == MiB and esp.size_bytes == 8 * MiB
    assert cfg.bootable and cfg.attributes == 4
    assert swap.type_guid == pt.LINUX_SWAP_GUID
    assert table.backup_lba == table.last_lba == 64 * MiB // 512 - 1
    disk_guid = re.search(r"Disk identifier \(GUID\): (\S+)", sgdisk(gpt, "-p")).group(1)
    assert table.disk_guid == disk_guid.lower()


def test_read_from_file_descriptor(gpt):
    fd = os.open(gpt, os.O_RDONLY)
    try:
        assert [p.number for p in pt.read_table(fd).partitions] == [1, 2, 5]
    finally:
        os.close(fd)


def test_corrupt_primary_header_uses_backup(gpt):
    flip(gpt, 512 + 40)            # inside the primary header (first usable LBA)
    table = pt.read_table(gpt)
    assert table.kind == "gpt"
    assert not table.primary_ok and table.backup_ok and not table.ok
    assert any("primary GPT header CRC mismatch" in p for p in table.problems)
    assert any("using backup GPT" in p for p in table.problems)
    assert [p.name for p in table.partitions] == ["EFI System", "config-v2", ""]


def test_corrupt_primary_entry_array_detected(gpt):
    flip(gpt, 2 * 512 + 130)       # unique GUID of the second entry
    table = pt.read_table(gpt)
    assert not table.primary_ok and table.backup_ok
    assert "primary GPT entry array CRC mismatch" in table.problems
    assert len(table.partitions) == 3


def test_corrupt_backup_detected(gpt):
    flip(gpt, 64 * MiB - 512 + 60)
    table = pt.read_table(gpt)
    assert table.primary_ok and not table.backup_ok and not table.ok
    assert any("backup GPT header CRC mismatch" in p for p in table.problems)
    assert len(table.partitions) == 3


def test_both_copies_corrupt(gpt):
    flip(gpt, 512 + 40)
    flip(gpt, 64 * MiB - 512 + 40)
    table = pt.read_table(gpt)
    assert table.kind == "gpt" and table.partitions == []
    assert not table.primary_ok and not table.backup_ok
    assert "no valid GPT copy found" in table.problems


def test_small_image_on_larger_disk_has_misplaced_backup(gpt):
    with open(gpt, "r+b") as f:
        f.truncate(128 * MiB)
    table = pt.read_table(gpt)
    assert table.primary_ok and table.backup_ok
    assert table.backup_misplaced and not table.ok
    assert table.backup_lba == 64 * MiB // 512 - 1
    assert any("not at the end of the disk" in p for p in table.problems)


def test_gpt_without_protective_mbr(gpt):
    with open(gpt, "r+b") as f:
        f.write(b"\0" * 512)
    table = pt.read_table(gpt)
    assert table.kind == "gpt" and len(table.partitions) == 3
    assert "GPT header present but no protective MBR" in table.problems


def test_mbr_primary_partitions_and_signature(tmp_path):
    path = image(tmp_path)
    sfdisk(path, "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=8192, type=83, "
                 "bootable\nstart=10240, size=4096, type=82\n")
    table = pt.read_table(path)
    assert table.kind == "mbr" and table.ok
    assert table.disk_signature == 0x1234ABCD
    assert pt.mbr_disk_signature(path) == "0x1234abcd"
    root, swap = table.partitions
    assert (root.number, root.first_lba, root.last_lba, root.mbr_type, root.bootable) == \
        (1, 2048, 10239, pt.MBR_LINUX, True)
    assert (swap.number, swap.mbr_type, swap.bootable, swap.size_bytes) == \
        (2, pt.MBR_SWAP, False, 2 * MiB)
    assert table.primary_count == 2 and root.mbr_role == "primary"


def test_mbr_logical_partitions(tmp_path):
    path = image(tmp_path)
    sfdisk(path, "label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=40960, "
                 "type=5\nstart=10240, size=4096, type=83\nstart=16384, size=8192, type=82\n")
    table = pt.read_table(path)
    assert [(p.number, p.mbr_role) for p in table.partitions] == \
        [(1, "primary"), (2, "extended"), (5, "logical"), (6, "logical")]
    out = subprocess.run(["sfdisk", "--json", path], capture_output=True, text=True,
                         check=True).stdout
    dumped = {int(p["node"][len(path):]): p for p in json.loads(out)["partitiontable"]
              ["partitions"]}
    assert sorted(dumped) == [p.number for p in table.partitions]
    for part in table.partitions:
        entry = dumped[part.number]
        assert (entry["start"], entry["size"]) == (part.first_lba,
                                                   part.last_lba - part.first_lba + 1)
        assert int(entry["type"], 16) == part.mbr_type
    assert table.primary_count == 2


def test_gpt_disk_signature_is_usually_zero(gpt):
    assert pt.mbr_disk_signature(gpt) == "0x00000000"


def test_no_table(tmp_path):
    table = pt.read_table(image(tmp_path))
    assert table.kind is None and table.partitions == []


def test_fat_boot_sector_is_not_a_partition_table(tmp_path):
    path = image(tmp_path, 33)
    subprocess.run(["mkfs.vfat", path], check=True, capture_output=True)
    table = pt.read_table(path)
    assert table.kind is None
    assert "FAT filesystem without a partition table" in table.problems


def test_tiny_file(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\0" * 100)
    table = pt.read_table(str(path))
    assert table.kind is None and "too small" in table.problems[0]


def test_explicit_sector_size_wrong_finds_nothing(gpt):
    table = pt.read_table(gpt, sector_size=4096)
    assert table.kind == "gpt" and table.partitions == []
    assert not table.primary_ok


def test_512_byte_gpt_read_with_4k_sectors_is_explained(gpt):
    table = pt.read_table(gpt, sector_size=4096)
    assert any("GPT header exists for 512-byte sectors" in p for p in table.problems)


def test_partition_beyond_disk_end_is_ignored(tmp_path):
    # a GPT image cut short: its last partition no longer fits on the "disk"
    path = image(tmp_path, 64)
    sfdisk(path, "label: gpt\nstart=2048, size=2048\nstart=100000, size=20000\n")
    with open(path, "r+b") as f:
        f.truncate(48 * MiB)
    table = pt.read_table(path)
    assert [p.number for p in table.partitions] == [1]
    assert any("partition 2 (LBA 100000-119999) does not fit" in p for p in table.problems)
