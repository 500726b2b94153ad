"""Partition tables read from image files written by the real sgdisk/sfdisk."""

from __future__ import annotations

import subprocess

from agent.hardware import ptable

MIB = 1024 * 1024
VMFS = "AA31E02A-400F-11DB-9590-000C2911D1B8"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def image(tmp_path, size=64 * MIB):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def test_gpt_entries_with_type_guids(tmp_path):
    path = image(tmp_path)
    subprocess.run(["sgdisk", "-n", "1:2048:+8M", "-t", f"1:{LINUX}",
                    "-n", "3:0:+16M", "-t", f"3:{VMFS}", path], check=True, capture_output=True)
    entries = ptable.read_table(path)
    assert [(e.number, e.start, e.size, e.type_code, e.scheme) for e in entries] == [
        (1, 1 * MIB, 8 * MIB, LINUX, "gpt"), (3, 9 * MIB, 16 * MIB, VMFS, "gpt")]


def test_backup_gpt_used_when_primary_is_destroyed(tmp_path):
    path = image(tmp_path)
    subprocess.run(["sgdisk", "-n", "1:2048:+8M", path], check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(512)
        f.write(bytes(512 * 33))          # primary header and entries gone
    entries = ptable.read_table(path)
    assert [(e.number, e.start, e.size) for e in entries] == [(1, MIB, 8 * MIB)]


def test_mbr_primary_extended_and_logical(tmp_path):
    path = image(tmp_path)
    layout = "label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=81920, type=5\n" \
             "start=20480, size=8192, type=fb\nstart=30720, size=8192, type=83\n"
    subprocess.run(["sfdisk", path], input=layout, text=True, check=True, capture_output=True)
    entries = ptable.read_table(path)
    assert [(e.number, e.start // 512, e.size // 512, e.type_code) for e in entries] == [
        (1, 2048, 16384, "0x83"), (2, 18432, 81920, "0x05"),
        (5, 20480, 8192, "0xfb"), (6, 30720, 8192, "0x83")]


def test_blank_disk_has_no_entries(tmp_path):
    assert ptable.read_table(image(tmp_path)) == []
