"""Table changes through sgdisk/sfdisk, checked with our reader, on image files."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from agent.disk import partition_edit as pe
from agent.disk import partition_table as pt
from agent.errors import DeploymentError

MiB = 1024 * 1024
TiB = 1024 ** 4


def image(tmp_path, size: int, name: str = "disk.img") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def grow(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def sfdisk(path: str, script: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", path], input=script,
                   check=True, capture_output=True, text=True)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def small_gpt(tmp_path) -> str:
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, 'label: gpt\nstart=2048, size=40960, name="root"\n')
    grow(path, 160 * MiB)      # the image is smaller than the disk it was written to
    return path


def test_relocate_backup(small_gpt):
    before = pt.read_table(small_gpt)
    assert before.backup_misplaced
    after = pe.relocate_backup(small_gpt)
    assert after.ok and after.backup_lba == after.last_lba
    assert after.last_usable_lba > before.last_usable_lba
    assert [(p.unique_guid, p.first_lba, p.last_lba) for p in after.partitions] == \
        [(p.unique_guid, p.first_lba, p.last_lba) for p in before.partitions]


def test_relocate_is_a_no_op_on_a_good_table(small_gpt):
    pe.relocate_backup(small_gpt)
    before = digest(small_gpt)
    assert pe.relocate_backup(small_gpt).ok
    assert digest(small_gpt) == before


def test_relocate_refuses_mbr(tmp_path):
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, "label: dos\nstart=2048, size=2048, type=83\n")
    with pytest.raises(DeploymentError, match="has a mbr partition table, expected gpt"):
        pe.relocate_backup(path)


def test_add_gpt_partition_at_end_relocates_first(small_gpt):
    part = pe.add_partition_at_end(small_gpt, 64 * MiB, name="config-v2")
    table = pt.read_table(small_gpt)
    assert table.ok
    assert part == table.get(2)
    assert part.name == "config-v2" and part.type_guid == pt.LINUX_FS_GUID
    assert part.last_lba == table.last_usable_lba
    assert part.size_bytes >= 64 * MiB and part.start_bytes % MiB == 0
    assert part.size_bytes < 65 * MiB
    info = subprocess.run(["sgdisk", "-i", "2", small_gpt], capture_output=True, text=True,
                          check=True).stdout
    assert part.unique_guid.upper() in info


def test_add_gpt_partition_gets_a_fresh_guid_each_time(tmp_path):
    guids = set()
    for i in range(2):
        path = image(tmp_path, 128 * MiB, f"d{i}.img")
        sfdisk(path, "label: gpt\n")
        guids.add(pe.add_partition_at_end(path, 8 * MiB, name="x").unique_guid)
    assert len(guids) == 2


def test_add_gpt_refuses_damaged_primary(small_gpt):
    with open(small_gpt, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff")
    before = digest(small_gpt)
    with pytest.raises(DeploymentError, match="primary copy is damaged"):
        pe.add_partition_at_end(small_gpt, 8 * MiB)
    assert digest(small_gpt) == before


def test_add_mbr_primary(tmp_path):
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, "label: dos\nlabel-id: 0xdeadbeef\nstart=2048, size=20480, type=83\n")
    grow(path, 256 * MiB)
    part = pe.add_partition_at_end(path, 64 * MiB)
    table = pt.read_table(path)
    assert table.disk_signature == 0xDEADBEEF
    assert part.number == 2 and part.mbr_role == "primary" and part.mbr_type == pt.MBR_LINUX
    assert part.last_lba == table.last_lba and part.size_bytes == 64 * MiB
    assert table.get(1).size_bytes == 10 * MiB


def test_add_mbr_refuses_with_four_primaries(tmp_path):
    path = image(tmp_path, 96 * MiB)
    sfdisk(path, "label: dos\n" + "".join(f"start={2048 * (i + 1)}, size=2048, type=83\n"
                                          for i in range(4)))
    before = digest(path)
    with pytest.raises(DeploymentError, match="already has four primary partitions"):
        pe.add_partition_at_end(path, 64 * MiB)
    assert digest(path) == before


def test_add_mbr_stays_below_two_tib(tmp_path):
    path = image(tmp_path, 3 * TiB)        # sparse: nothing is really allocated
    sfdisk(path, "label: dos\nstart=2048, size=2048, type=83\n")
    part = pe.add_partition_at_end(path, 64 * MiB)
    assert part.last_lba == 2 ** 32 - 1
    assert part.end_bytes == 2 * TiB
    assert part.size_bytes == 64 * MiB


def test_add_without_free_space(tmp_path):
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, "label: dos\nstart=2048\n")       # fills the disk
    with pytest.raises(DeploymentError, match="not enough free space at the end"):
        pe.add_partition_at_end(path, 16 * MiB)


def test_add_without_table(tmp_path):
    with pytest.raises(DeploymentError, match="has no partition table"):
        pe.add_partition_at_end(image(tmp_path, 64 * MiB), 8 * MiB)


def test_add_rejects_unaligned_size(small_gpt):
    with pytest.raises(DeploymentError, match="not a positive multiple"):
        pe.add_partition_at_end(small_gpt, 1000)


def test_write_gpt_layout(tmp_path):
    path = image(tmp_path, 128 * MiB)
    specs = [pe.PartSpec("esp", 16 * MiB, type_guid=pt.ESP_GUID, name="efi-part"),
             pe.PartSpec("cfg", 2 * MiB, name="config-v2"),
             pe.PartSpec("root", 0, bootable=True)]
    parts = pe.write_layout(path, "gpt", specs)
    table = pt.read_table(path)
    assert table.ok and [p.number for p in table.partitions] == [1, 2, 3]
    assert parts["esp"].start_bytes == MiB and parts["esp"].type_guid == pt.ESP_GUID
    assert parts["cfg"].name == "config-v2" and parts["cfg"].start_bytes == 17 * MiB
    assert parts["root"].start_bytes == 19 * MiB and parts["root"].bootable
    # the rest of the disk, ending on the last whole MiB before the backup GPT
    assert 0 <= table.last_usable_lba - parts["root"].last_lba < MiB // 512
    assert parts["root"].end_bytes % MiB == 0


def test_write_msdos_layout_with_logical_partitions(tmp_path):
    path = image(tmp_path, 128 * MiB)
    specs = [pe.PartSpec("esp", 8 * MiB, mbr_type=pt.MBR_ESP),
             pe.PartSpec("eph", 4 * MiB), pe.PartSpec("swap", 4 * MiB, mbr_type=pt.MBR_SWAP),
             pe.PartSpec("cfg", 1 * MiB), pe.PartSpec("root", 0, bootable=True)]
    parts = pe.write_layout(path, "msdos", specs)
    assert [parts[k].number for k in ("esp", "eph", "swap", "cfg", "root")] == [1, 2, 3, 5, 6]
    assert parts["cfg"].mbr_role == "logical" and parts["root"].bootable
    table = pt.read_table(path)
    assert table.kind == "mbr" and table.ok
    assert table.get(4).mbr_role == "extended"
    assert parts["root"].end_bytes == 128 * MiB


def test_msdos_layout_replaces_gpt_completely(tmp_path):
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, "label: gpt\nstart=2048, size=16384\n")
    pe.write_layout(path, "msdos", [pe.PartSpec("root", 0)])
    with open(path, "rb") as f:
        f.seek(64 * MiB - 512)
        assert b"EFI PART" not in f.read(512)      # no stale backup GPT
    assert pt.read_table(path).kind == "mbr"


def test_gpt_layout_replaces_mbr(tmp_path):
    path = image(tmp_path, 64 * MiB)
    sfdisk(path, "label: dos\nstart=2048, size=2048, type=83\nstart=4096, type=82\n")
    parts = pe.write_layout(path, "gpt", [pe.PartSpec("root", 0)])
    table = pt.read_table(path)
    assert table.kind == "gpt" and table.ok and table.partitions == [parts["root"]]


def test_layout_too_big_touches_nothing(small_gpt):
    before = digest(small_gpt)
    with pytest.raises(DeploymentError, match="the layout needs 301 MiB"):
        pe.write_layout(small_gpt, "gpt", [pe.PartSpec("a", 300 * MiB)])
    with pytest.raises(DeploymentError, match="addressable by MBR"):
        pe.write_layout(small_gpt, "msdos", [pe.PartSpec("a", 300 * MiB), pe.PartSpec("b", 0)])
    assert digest(small_gpt) == before


@pytest.mark.parametrize("label,specs,match", [
    ("bsd", [pe.PartSpec("a", MiB)], "unsupported disk label"),
    ("gpt", [], "a layout needs partitions"),
    ("gpt", [pe.PartSpec("a", 0), pe.PartSpec("b", MiB)], "only the last may fill"),
    ("gpt", [pe.PartSpec("a", 1000)], "whole MiB"),
])
def test_layout_validation(small_gpt, label, specs, match):
    before = digest(small_gpt)
    with pytest.raises(DeploymentError, match=match):
        pe.write_layout(small_gpt, label, specs)
    assert digest(small_gpt) == before


# --- GPT edits go through sfdisk: same table bytes, no sync-and-sleep ----------------------

@pytest.fixture
def tools_used(monkeypatch) -> list[str]:
    from agent import tools
    used: list[str] = []
    real = tools.run

    def recording(tool, *args, **kwargs):
        used.append(tool)
        return real(tool, *args, **kwargs)
    monkeypatch.setattr(tools, "run", recording)
    return used


def test_gpt_edits_do_not_use_sgdisk(small_gpt, tools_used):
    # sgdisk calls sync() and then sleeps a second after every table it writes
    pe.add_partition_at_end(small_gpt, 8 * MiB, name="config-v2")
    assert tools_used and "sgdisk" not in tools_used


def test_gpt_edits_keep_boot_code_and_disk_signature(small_gpt):
    code = bytes(range(256)) + bytes(range(184)) + b"\x78\x56\x34\x12"
    with open(small_gpt, "r+b") as f:
        f.write(code)
    pe.add_partition_at_end(small_gpt, 8 * MiB, name="config-v2")
    with open(small_gpt, "rb") as f:
        assert f.read(444) == code
    assert pt.read_table(small_gpt).disk_signature == 0x12345678


def test_relocate_agrees_with_sgdisk(tmp_path, small_gpt):
    ours = small_gpt
    theirs = str(tmp_path / "sgdisk.img")
    with open(ours, "rb") as src, open(theirs, "wb") as dst:
        dst.write(src.read())
    pe.relocate_backup(ours)
    subprocess.run(["sgdisk", "-e", theirs], check=True, capture_output=True)
    a, b = pt.read_table(ours), pt.read_table(theirs)
    assert a.ok and b.ok and a.partitions == b.partitions
    assert (a.disk_guid, a.backup_lba, a.first_usable_lba) == \
        (b.disk_guid, b.backup_lba, b.first_usable_lba)
    # sgdisk mirrors the 1 MiB reserved at the start at the end; both are valid
    assert a.last_usable_lba >= b.last_usable_lba
    check = subprocess.run(["sgdisk", "-v", ours], capture_output=True, text=True)
    assert check.returncode == 0 and "No problems found" in check.stdout


def test_gpt_edits_leave_a_hybrid_mbr_alone(tmp_path):
    path = image(tmp_path, 64 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+8M", "-t", "1:ef00", "-n", "2:0:+8M", path],
                   check=True, capture_output=True)
    subprocess.run(["sgdisk", "-h", "1", path], check=True, capture_output=True)
    with open(path, "rb") as f:
        mbr = f.read(512)
    grow(path, 128 * MiB)
    part = pe.add_partition_at_end(path, 8 * MiB, name="config-v2")
    assert part.number == 3 and pt.read_table(path).ok
    with open(path, "rb") as f:
        assert f.read(512) == mbr


@pytest.mark.parametrize("name", ['con"fig', "a\\b", "line\nbreak", "x" * 37])
def test_gpt_name_that_cannot_be_written_touches_nothing(small_gpt, name):
    before = digest(small_gpt)      # the backup GPT is misplaced: not even that moves
    with pytest.raises(DeploymentError, match="GPT partition name"):
        pe.add_partition_at_end(small_gpt, 8 * MiB, name=name)
    assert digest(small_gpt) == before


def test_gpt_name_of_36_characters(small_gpt):
    part = pe.add_partition_at_end(small_gpt, 8 * MiB, name="n" * 36)
    assert part.name == "n" * 36
