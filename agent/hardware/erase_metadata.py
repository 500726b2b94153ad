"""Wipe partition tables and every filesystem/RAID/LVM signature on one disk.

Signatures inside partitions go first (a table recreated later at the same
offsets would otherwise bring the old filesystem back), then the disk's own
signatures, then the first and last MiB: the MBR, both GPT headers and both
GPT entry arrays live there whatever the sector size.
"""

from __future__ import annotations

import logging
import os

from agent import tools
from agent.errors import CleaningError
from agent.hardware import blkpg, ptable
from agent.hardware.disks import Disk, list_partitions

LOG = logging.getLogger(__name__)

EDGE = 1024 * 1024
_TEMP_PARTNO_BASE = 200   # well above anything a real table uses


def _wipe(device: str) -> None:
    tools.run("wipefs", "--force", "--all", device, timeout=120)


def _zero_edges(disk: Disk) -> None:
    fd = os.open(disk.name, os.O_WRONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        zeros = bytes(min(EDGE, size))
        os.pwrite(fd, zeros, 0)
        if size > EDGE:
            tail = min(EDGE, size - EDGE)
            os.pwrite(fd, zeros[:tail], size - tail)
        os.fsync(fd)
    finally:
        os.close(fd)


def _expose_hidden_partitions(disk: Disk) -> list[tuple[int, str]]:
    """Add kernel nodes for table entries the kernel does not show; (pno, node) added."""
    try:
        entries = ptable.read_table(disk.name, disk.logical_sectors)
    except OSError as exc:
        LOG.warning("cannot read the partition table of %s: %s", disk.name, exc)
        return []
    known = {(p.start, p.size) for p in list_partitions(disk)}
    added = []
    for i, entry in enumerate(entries):
        if (entry.start, entry.size) in known:
            continue
        number = _TEMP_PARTNO_BASE + i
        try:
            node = blkpg.add_partition(disk.name, number, entry.start, entry.size)
        except OSError as exc:
            # overlaps a stale kernel partition; the table itself is still wiped below
            LOG.warning("cannot expose partition %d of %s to wipe it: %s", entry.number,
                        disk.name, exc)
            continue
        added.append((number, node))
    return added


def erase_metadata(disk: Disk) -> str:
    """Wipe ``disk``; returns a short description of what was wiped."""
    temporary = _expose_hidden_partitions(disk)
    try:
        partitions = [p.name for p in list_partitions(disk)]
        for node in partitions:
            if os.path.exists(node):
                _wipe(node)
        _wipe(disk.name)
        _zero_edges(disk)
    finally:
        for number, _ in temporary:
            try:
                blkpg.delete_partition(disk.name, number)
            except OSError as exc:
                LOG.warning("cannot remove temporary partition %d of %s: %s", number,
                            disk.name, exc)
    # stale partition nodes disappear where the kernel can re-read (not always: busy, loop)
    blkpg.reread(disk.name)
    leftover = tools.run("blkid", "-p", "-o", "export", disk.name, ok_codes=(0, 2),
                         timeout=60)
    if leftover.returncode == 0 and leftover.stdout.strip():
        raise CleaningError(f"signatures remain on {disk.name} after wiping: "
                            f"{' '.join(leftover.stdout.split())}")
    LOG.info("erased metadata on %s (%d partition(s))", disk.name, len(partitions))
    return f"metadata erased ({len(partitions)} partition(s) wiped)"
