"""Read-only GPT and MBR parsing, straight from the disk.

The guards need partition type codes and the metadata eraser needs partition
offsets even when the kernel has not (or cannot) expose partition nodes, so
the tables are read here instead of trusting the kernel's view.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import uuid

LOG = logging.getLogger(__name__)

GPT_SIGNATURE = b"EFI PART"
_EXTENDED = {0x05, 0x0F, 0x85}


@dataclasses.dataclass(frozen=True)
class Entry:
    number: int
    start: int            # bytes
    size: int             # bytes
    type_code: str        # GPT type GUID (upper case) or MBR type as "0xfb"
    scheme: str           # "gpt" | "dos"


def _read(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)


def _gpt_at(fd: int, lba: int, sector: int, disk_size: int) -> list[Entry] | None:
    header = _read(fd, lba * sector, 92)
    if len(header) < 92 or header[:8] != GPT_SIGNATURE:
        return None
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not (0 < count <= 1024 and 128 <= entry_size <= 4096):
        return None
    table = _read(fd, entries_lba * sector, count * entry_size)
    found = []
    for i in range(count):
        raw = table[i * entry_size:(i + 1) * entry_size]
        if len(raw) < 56 or raw[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        if last < first or first * sector >= disk_size:
            continue
        type_guid = str(uuid.UUID(bytes_le=raw[:16])).upper()
        found.append(Entry(i + 1, first * sector, (last - first + 1) * sector, type_guid, "gpt"))
    return found


def _mbr(fd: int, sector: int) -> list[Entry] | None:
    mbr = _read(fd, 0, 512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    found = []
    extended = None
    for i in range(4):
        raw = mbr[446 + 16 * i:446 + 16 * (i + 1)]
        ptype = raw[4]
        start, count = struct.unpack_from("<II", raw, 8)
        if ptype == 0 or count == 0:
            continue
        found.append(Entry(i + 1, start * sector, count * sector, f"0x{ptype:02x}", "dos"))
        if ptype in _EXTENDED:
            extended = start
    number = 5
    ebr = extended
    seen = set()
    while ebr is not None and ebr not in seen and number < 64:
        seen.add(ebr)
        block = _read(fd, ebr * sector, 512)
        if len(block) < 512 or block[510:512] != b"\x55\xaa":
            break
        ptype = block[446 + 4]
        rel, count = struct.unpack_from("<II", block, 446 + 8)
        if ptype and count:
            found.append(Entry(number, (ebr + rel) * sector, count * sector,
                               f"0x{ptype:02x}", "dos"))
            number += 1
        next_rel = struct.unpack_from("<I", block, 446 + 16 + 8)[0]
        ebr = extended + next_rel if next_rel and extended is not None else None
    return found


def read_table(device: str, sector: int = 512) -> list[Entry]:
    """Partitions in the on-disk table (primary GPT, backup GPT, then MBR)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        entries = _gpt_at(fd, 1, sector, size)
        if entries is None and size >= 2 * sector:
            # a damaged primary header still leaves the backup in the last sector
            entries = _gpt_at(fd, size // sector - 1, sector, size)
        if entries is not None:
            return entries
        dos = _mbr(fd, sector) or []
        return [e for e in dos if e.type_code != "0xee"]
    finally:
        os.close(fd)
