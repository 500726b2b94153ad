"""Kernel partition nodes through the BLKPG and BLKRRPART ioctls.

Used to expose a partition the kernel did not parse (a kernel without that
table parser, or a stale view) just long enough to wipe its signatures, and
to ask the kernel to drop partitions after their table was erased.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import struct

LOG = logging.getLogger(__name__)

BLKRRPART = 0x125F
BLKPG = 0x1269
BLKPG_ADD_PARTITION = 1
BLKPG_DEL_PARTITION = 2


def partition_name(disk: str, number: int) -> str:
    """/dev/sda + 1 → /dev/sda1; /dev/nvme0n1 + 1 → /dev/nvme0n1p1."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def _blkpg(disk: str, op: int, number: int, start: int = 0, length: int = 0) -> None:
    # struct blkpg_partition {long long start, length; int pno; char devname[64], volname[64]}
    part = ctypes.create_string_buffer(struct.pack("qqi64s64s", start, length, number, b"", b""))
    # struct blkpg_ioctl_arg {int op; int flags; int datalen; void *data}
    arg = struct.pack("iiiP", op, 0, ctypes.sizeof(part), ctypes.addressof(part))
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKPG, arg)
    finally:
        os.close(fd)


def add_partition(disk: str, number: int, start: int, length: int) -> str:
    _blkpg(disk, BLKPG_ADD_PARTITION, number, start, length)
    return partition_name(disk, number)


def delete_partition(disk: str, number: int) -> None:
    _blkpg(disk, BLKPG_DEL_PARTITION, number)


def reread(disk: str) -> bool:
    """Ask the kernel to re-read the table; False when it cannot (busy, no parser)."""
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        LOG.debug("cannot open %s to re-read partitions: %s", disk, exc)
        return False
    try:
        fcntl.ioctl(fd, BLKRRPART)
        return True
    except OSError as exc:
        LOG.debug("BLKRRPART on %s: %s", disk, exc)
        return False
    finally:
        os.close(fd)
