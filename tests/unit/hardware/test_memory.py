"""Installed memory: SMBIOS type 17, device tree, memory blocks."""

from __future__ import annotations

import os
import struct

import pytest

from agent.hardware import memory
from tests.unit.hardware.fake_sysfs import write

PPC = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hardware", "ppc64le")


def smbios_structure(kind: int, body: bytes, strings: list[bytes] = ()) -> bytes:
    header = struct.pack("<BBH", kind, 4 + len(body), 0x1100)
    tail = b"".join(s + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return header + body + tail


def memory_device(size_word: int, extended: int = 0) -> bytes:
    # type 17, SMBIOS 3.x layout up to Extended Size (0x1C..0x1F)
    body = bytearray(0x28 - 4)
    struct.pack_into("<H", body, 0x0C - 4, size_word)
    struct.pack_into("<I", body, 0x1C - 4, extended)
    return smbios_structure(17, bytes(body), [b"DIMM_A1", b"BANK 0", b"Samsung"])


def test_smbios_sums_installed_dimms_in_every_size_encoding():
    table = (smbios_structure(0, bytes(20), [b"Dell Inc.", b"2.12.2"])
             + memory_device(16384)                     # 16 GiB in MB
             + memory_device(0)                         # empty slot
             + memory_device(0xFFFF)                    # unknown size
             + memory_device(0x8000 | 2048)             # 2 MiB given in KiB
             + memory_device(0x7FFF, 65536)             # 64 GiB via Extended Size
             + smbios_structure(127, b""))
    assert memory.smbios_memory_mb(table) == 16384 + 2 + 65536


def test_smbios_without_memory_devices_is_none():
    assert memory.smbios_memory_mb(smbios_structure(0, bytes(20), [b"x"])) is None


def test_device_tree_memory_nodes_on_ppc64le():
    assert memory.devicetree_memory_mb(PPC) == 512 * 1024


def test_ppc64le_collect_prefers_device_tree_and_reads_meminfo():
    info = memory.collect(PPC)
    assert info == {"total": 535318592 * 1024, "physical_mb": 524288}


def test_memory_blocks_fallback(tmp_path):
    write(tmp_path / "proc/meminfo", "MemTotal:       24684092 kB\n")
    write(tmp_path / "sys/devices/system/memory/block_size_bytes", "8000000\n")
    for n in range(192):
        (tmp_path / f"sys/devices/system/memory/memory{n}").mkdir(parents=True)
    assert memory.collect(str(tmp_path)) == {"total": 24684092 * 1024, "physical_mb": 24576}


def test_unknown_installed_memory_is_null_and_logged(tmp_path, caplog):
    write(tmp_path / "proc/meminfo", "MemTotal:       1024 kB\n")
    assert memory.collect(str(tmp_path))["physical_mb"] is None
    assert "installed memory unknown" in caplog.text


def test_missing_meminfo_raises(tmp_path):
    with pytest.raises(OSError):
        memory.collect(str(tmp_path))
