"""The ``memory`` inventory object.

``total`` is what the kernel can use (MemTotal).  ``physical_mb`` is what is
installed, from the most direct source available: the SMBIOS memory-device
table (what dmidecode/lshw read), the device tree's memory nodes on POWER and
arm64, and finally the memory-hotplug blocks, which cover installed RAM
including what firmware reserved.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

from agent.disk import sysfs

LOG = logging.getLogger(__name__)
MIB = 1024 * 1024


def mem_total(root: str = "/") -> int:
    text = sysfs.read_str(sysfs.path(root, "/proc/meminfo")) or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def smbios_memory_mb(table: bytes) -> int | None:
    """Sum SMBIOS type-17 (Memory Device) sizes in MiB; None without any."""
    total = 0
    seen = False
    offset = 0
    while offset + 4 <= len(table):
        kind, length = table[offset], table[offset + 1]
        if length < 4:
            break
        if kind == 17 and length >= 0x0E:
            size = struct.unpack_from("<H", table, offset + 0x0C)[0]
            if size == 0x7FFF and length >= 0x20:
                total += struct.unpack_from("<I", table, offset + 0x1C)[0] & 0x7FFFFFFF
                seen = True
            elif size not in (0, 0xFFFF):
                # bit 15 set: the size is in KiB
                total += (size & 0x7FFF) // 1024 if size & 0x8000 else size
                seen = True
        if kind == 127:
            break
        # the formatted area is followed by strings ending in a double NUL
        end = table.find(b"\0\0", offset + length)
        if end < 0:
            break
        offset = end + 2
    return total if seen else None


def devicetree_memory_mb(root: str) -> int | None:
    base = sysfs.path(root, "/proc/device-tree")
    cells = sysfs.read_bytes(os.path.join(base, "#address-cells"))
    scells = sysfs.read_bytes(os.path.join(base, "#size-cells"))
    addr_cells = struct.unpack(">I", cells)[0] if cells and len(cells) == 4 else 2
    size_cells = struct.unpack(">I", scells)[0] if scells and len(scells) == 4 else 2
    entry = 4 * (addr_cells + size_cells)
    total = 0
    for node in sysfs.listdir(base):
        if not (node == "memory" or node.startswith("memory@")):
            continue
        reg = sysfs.read_bytes(os.path.join(base, node, "reg")) or b""
        for off in range(0, len(reg) - entry + 1, entry):
            size = 0
            for i in range(size_cells):
                pos = off + 4 * (addr_cells + i)
                size = (size << 32) | struct.unpack_from(">I", reg, pos)[0]
            total += size
    return total // MIB if total else None


def hotplug_memory_mb(root: str) -> int | None:
    base = sysfs.path(root, "/sys/devices/system/memory")
    block = sysfs.read_int(os.path.join(base, "block_size_bytes"), 16)
    blocks = sum(1 for n in sysfs.listdir(base) if n.startswith("memory") and n[6:].isdigit())
    return block * blocks // MIB if block and blocks else None


def collect(root: str = "/") -> dict[str, Any]:
    total = mem_total(root)
    physical = None
    table = sysfs.read_bytes(sysfs.path(root, "/sys/firmware/dmi/tables/DMI"))
    if table:
        physical = smbios_memory_mb(table)
    if physical is None:
        physical = devicetree_memory_mb(root)
    if physical is None:
        physical = hotplug_memory_mb(root)
    if physical is None:
        LOG.warning("installed memory unknown: no SMBIOS table, device-tree memory nodes "
                    "or memory blocks readable; physical_mb is null")
    return {"total": total, "physical_mb": physical}
