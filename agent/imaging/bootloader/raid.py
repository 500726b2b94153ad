"""Software RAID: make an md install disk bootable from every one of its member disks.

Firmware knows nothing of md, so whatever it loads must sit on each member
disk, outside the array, in the "boot room" the RAID step left at the front of
every member (agent.hardware.raid.layout):

- BIOS (``raid_bios``): a BIOS boot partition (GPT) or the gap before the first
  partition (MBR) receives a core.img built from the ramdisk's own grub,
  and the MBR the boot.img code that loads it.
- UEFI (``raid_uefi``): an ESP on every member, mirrored as md RAID-1 with the
  superblock at the end, filled from the image's own ESP; one NVRAM entry per
  member.

Both run nothing from the tenant image (the CVE-2026-43003 gate on
``enable_bios_bootloader_install`` does not apply).  ``list_arrays`` is the
seam tests replace: this host's kernel has no md driver.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from agent import tools
from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import CommandExecutionError, DeviceNotFound
from agent.hardware.disks import Disk
from agent.hardware.raid.arrays import MdArray, list_arrays

LOG = logging.getLogger(__name__)

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class BootRoom:
    """Free space at the front of a member disk, before its first partition."""

    disk: str
    table: pt.PartitionTable
    first_lba: int            # first free sector (after the partition table)
    end_lba: int              # exclusive: the first partition's start (or the usable end)

    @property
    def sectors(self) -> int:
        return max(self.end_lba - self.first_lba, 0)

    def aligned_start(self) -> int:
        """The first 1 MiB boundary in the room (or its first sector when none is)."""
        per_mib = MiB // self.table.sector_size
        start = -(-self.first_lba // per_mib) * per_mib
        return start if start < self.end_lba else self.first_lba


def array_for(disk: Disk) -> MdArray | None:
    """The md array that ``disk`` is, or None for an ordinary disk."""
    wanted = {disk.name, os.path.realpath(disk.name)}
    # plugin hardware managers may return a disk-like object without every field
    kname, kind = getattr(disk, "kname", ""), getattr(disk, "kind", "disk")
    for array in list_arrays():
        if wanted.intersection(array.names) or (kname and kname == array.kname):
            return array
    if kind == "md":
        raise DeviceNotFound(f"{disk.name} is an md device, but the kernel lists no running "
                             "array by that name; its member disks are unknown")
    return None


def member_disks(array: MdArray) -> list[str]:
    """The whole disks under ``array``, checked to be usable for boot code."""
    if not array.member_disks:
        raise DeviceNotFound(f"the md array {array.device} lists no member disks "
                             f"({array.describe()})")
    nested = [d for d in array.member_disks if os.path.basename(d).startswith("md")]
    if nested:
        raise CommandExecutionError(
            f"the md array {array.device} is built on other md devices ({', '.join(nested)}); "
            "firmware cannot boot from nested arrays")
    if array.state in ("inactive", "clear"):
        LOG.warning("md array %s is %s; installing boot code on its members anyway",
                    array.device, array.state)
    return list(array.member_disks)


def boot_room(disk: str) -> BootRoom:
    """The space before the first partition of ``disk`` (a member disk)."""
    table = pt.read_table(disk)
    if table.kind is None:
        raise DeviceNotFound(f"the RAID member {disk} has no partition table "
                             f"({'; '.join(table.problems) or 'none found'})")
    ss = table.sector_size
    if table.kind == "gpt":
        first = table.first_usable_lba or (2 + 16384 // ss)
        end = (table.last_usable_lba or table.last_lba) + 1
    else:
        first, end = 1, table.last_lba + 1
    starts = [p.first_lba for p in table.partitions if p.mbr_role != "logical"]
    if starts:
        end = min(end, min(starts))
    return BootRoom(disk, table, first, end)


def add_partition(room: BootRoom, number: int, first: int, last: int, type_code: str,
                  name: str) -> str:
    """Create a GPT partition in the boot room, make the kernel see it, return its node."""
    tools.run("sgdisk", f"--new={number}:{first}:{last}", f"--typecode={number}:{type_code}",
              f"--change-name={number}:{name}", room.disk, timeout=60.0)
    table = pt.read_table(room.disk)
    made = table.get(number)
    if made is None or made.first_lba != first or made.last_lba != last:
        raise CommandExecutionError(f"sgdisk reported success but {room.disk} has no partition "
                                    f"{number} at sectors {first}-{last}")
    # BLKRRPART is refused while the array holds the other partitions; reread
    # then adds just this one through BLKPG
    return reread.reread(room.disk, table=table).partitions[number]


def free_number(table: pt.PartitionTable) -> int:
    used = {p.number for p in table.partitions}
    return next(n for n in range(1, 129) if n not in used)


def sync_device(path: str) -> None:
    """fsync a block device, so what was written is on the medium before verifying."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
