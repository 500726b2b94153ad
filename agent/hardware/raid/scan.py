"""md superblocks found by reading the disks themselves, and zeroed the same way.

A running array names its members in sysfs, but an array that is not running
(no md driver yet, or one member of a broken set) is only a superblock on a
disk.  ``delete_configuration`` must find those too, or the next boot
assembles them again.  Partitions are located through our own table reader
and read at their offsets on the whole disk, so this works whether or not the
kernel has made partition nodes (this test host makes none by itself).

Version-1 superblocks sit at the start (1.1), 4 KiB in (1.2) or 8 KiB before
the end, 4 KiB aligned (1.0); version 0.90 sits in the last 64 KiB-aligned
64 KiB.  Each starts with the md magic, followed by its major version.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence

from agent.disk import partition_table as pt

MD_MAGIC = 0xA92B4EFC
SUPERBLOCK_BYTES = 4096
_HEAD = struct.Struct("<II")


@dataclasses.dataclass(frozen=True)
class Found:
    disk: str
    partition: int | None          # None: the whole disk is the member
    offset: int                    # bytes from the start of the disk
    version: str                   # "0.90", "1.0", "1.1" or "1.2"

    def describe(self) -> str:
        where = f"partition {self.partition} of {self.disk}" if self.partition \
            else self.disk
        return f"{where} (metadata {self.version})"


def _offsets(size: int) -> list[tuple[int, str]]:
    spots = [(0, "1.1"), (4096, "1.2")]
    if size >= 3 * 8192:
        spots.append(((size - 8192) & ~4095, "1.0"))
    if size >= 2 * 65536:
        spots.append(((size & ~65535) - 65536, "0.90"))
    return spots


def _magic_at(fd: int, offset: int, version: str) -> bool:
    head = os.pread(fd, _HEAD.size, offset)
    if len(head) < _HEAD.size:
        return False
    magic, major = _HEAD.unpack(head)
    return magic == MD_MAGIC and major == (0 if version == "0.90" else 1)


def scan_range(fd: int, disk: str, partition: int | None, start: int, size: int
               ) -> list[Found]:
    """Superblocks of a device occupying [start, start + size) of the open disk."""
    return [Found(disk, partition, start + offset, version)
            for offset, version in _offsets(size) if _magic_at(fd, start + offset, version)]


def scan_disk(disk: str) -> tuple[pt.PartitionTable, list[Found]]:
    """The disk's table and every superblock on the disk itself or in a partition."""
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        table = pt.read_table(fd)
        size = os.lseek(fd, 0, os.SEEK_END)
        found = scan_range(fd, disk, None, 0, size)
        for part in table.partitions:
            if part.mbr_role == "extended":
                continue
            found += scan_range(fd, disk, part.number, part.start_bytes, part.size_bytes)
    finally:
        os.close(fd)
    # a whole-disk 1.0 superblock and the last partition's may be the same
    # bytes: the partition's reading wins (later entries replace earlier ones)
    unique = {f.offset: f for f in sorted(found, key=lambda f: f.partition is not None)}
    return table, sorted(unique.values(), key=lambda f: f.offset)


def zero(disk: str, found: Sequence[Found]) -> None:
    """Overwrite each superblock with zeros (what ``mdadm --zero-superblock`` does)."""
    if not found:
        return
    fd = os.open(disk, os.O_WRONLY | os.O_CLOEXEC)
    try:
        zeros = bytes(SUPERBLOCK_BYTES)
        for item in found:
            os.pwrite(fd, zeros, item.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
