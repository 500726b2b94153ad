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
from agent.disk import blockdev, reread
from agent.errors import AgentError, CleaningError
from agent.hardware.disks import Disk, list_partitions

LOG = logging.getLogger(__name__)


def _wipe(device: str) -> None:
    tools.run("wipefs", "--force", "--all", device, timeout=120)


def _wipe_kernel_partitions(disk: Disk, done: set[tuple[int, int]]) -> None:
    """Wipe every partition the kernel shows that was not wiped yet (by start, size)."""
    for part in list_partitions(disk):
        key = (part.start, part.size)
        if key not in done and os.path.exists(part.name):
            _wipe(part.name)
            done.add(key)


def _sync_kernel(disk: Disk) -> None:
    """Make the kernel's partitions match the on-disk table (BLKPG where it cannot parse)."""
    try:
        reread.reread(disk.name)
    except (AgentError, OSError) as exc:
        LOG.warning("cannot bring the kernel's view of %s in line with its table: %s",
                    disk.name, exc)


def erase_metadata(disk: Disk) -> str:
    """Wipe ``disk``; returns a short description of what was wiped."""
    # what the kernel knows now, then what the on-disk table says (this kernel, or a
    # busy disk, may have left table entries without partition nodes)
    done: set[tuple[int, int]] = set()
    _wipe_kernel_partitions(disk, done)
    _sync_kernel(disk)
    _wipe_kernel_partitions(disk, done)
    wiped = len(done)
    _wipe(disk.name)
    blockdev.zero_edges(disk.name)
    # the table is gone: drop the partition nodes that described it
    _sync_kernel(disk)
    leftover = tools.run("blkid", "-p", "-o", "export", disk.name, ok_codes=(0, 2),
                         timeout=60)
    if leftover.returncode == 0 and leftover.stdout.strip():
        raise CleaningError(f"signatures remain on {disk.name} after wiping: "
                            f"{' '.join(leftover.stdout.split())}")
    LOG.info("erased metadata on %s (%d partition(s) wiped)", disk.name, wiped)
    return f"metadata erased ({wiped} partition(s) wiped)"
