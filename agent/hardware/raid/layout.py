"""Plan software RAID: holder partitions on each member disk and one md array per volume.

Pure arithmetic on validated logical disks and ``Disk`` objects: nothing is
read from or written to a device, so the whole plan, and every way it can
fail, is known before cleaning touches a disk.

Every member disk is laid out the same way:

    [1 MiB: tables][boot room][holder 1][holder 2 ...][free][last MiB: GPT backup]

The boot room is left empty for the partition the later deploy creates on
every member: the ESP (550 MiB, the agent's partition-image size) for UEFI,
a 1 MiB BIOS boot partition for BIOS on GPT, 8 MiB PReP on ppc64, and none for
BIOS on MBR, whose boot code lives in the first MiB.  Every start and size is a
whole MiB, so partitions are aligned on 512- and 4096-byte-sector disks alike.

A holder partition carries the md superblock in its first MiB (metadata 1.2
with ``--data-offset`` of 1 MiB, see ``mdadm.create``) and the member's share of
the array after it.  Fixed-size volumes come first on each disk, in the
caller's order; the ``MAX`` volume (at most one) takes what is left on its
smallest member, so all its holders are the same size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from agent.disk import partition_table as pt
from agent.errors import InvalidCommandParamsError
from agent.hardware.disks import GIB, Disk
from agent.hardware.raid.config import MDADM_LEVEL, LogicalDisk

MiB = 1 << 20
EDGE = MiB                     # first MiB: partition tables; last MiB: the GPT backup
# the same sizes as the agent's partition-image layout (agent/imaging/partition_image.py,
# which this floor cannot import; a unit test keeps the two equal)
ESP_MB = 550
BIOS_BOOT_MB = 1
PREP_MB = 8
MD_DATA_OFFSET = MiB           # superblock (at 4 KiB) and bitmap room before the data
METADATA = "1.2"


@dataclasses.dataclass(frozen=True)
class Holder:
    """One partition to create on a member disk, holding one array's member data."""

    disk: str
    number: int                # partition number on ``disk``
    start: int                 # bytes, multiple of 1 MiB
    size: int                  # bytes, multiple of 1 MiB
    path: str                  # /dev node the partition will have
    array: int                 # index of the logical disk it belongs to

    @property
    def end(self) -> int:
        return self.start + self.size

    def sectors(self, sector_size: int) -> tuple[int, int]:
        """(first sector, sector count) in the disk's logical sectors."""
        return self.start // sector_size, self.size // sector_size


@dataclasses.dataclass(frozen=True)
class DiskLayout:
    disk: str
    sector_size: int
    size: int
    boot_room: tuple[int, int]      # (start, size) bytes left free for the boot partition
    holders: tuple[Holder, ...]


@dataclasses.dataclass(frozen=True)
class ArrayPlan:
    index: int                      # the logical disk's position in the request
    md_device: str                  # /dev/mdN
    raid_level: str                 # schema spelling: "0", "1", "1+0", "5", "6"
    volume_name: str
    is_root_volume: bool
    requested_gb: int | None        # None: MAX
    members: tuple[str, ...]        # holder partition paths, in role order
    member_disks: tuple[str, ...]
    member_size: int                # bytes of data per member (holder minus md overhead)
    size: int                       # bytes the array will offer
    metadata: str = METADATA

    @property
    def mdadm_level(self) -> str:
        return MDADM_LEVEL[self.raid_level]

    @property
    def size_gb(self) -> int:
        """Whole GiB, as Ironic's raid_config records it (the request, or what MAX gave)."""
        return self.requested_gb if self.requested_gb is not None else self.size // GIB


@dataclasses.dataclass(frozen=True)
class Plan:
    boot_mode: str
    label: str
    disks: tuple[DiskLayout, ...]
    arrays: tuple[ArrayPlan, ...]   # in the caller's order

    def array(self, index: int) -> ArrayPlan:
        return next(a for a in self.arrays if a.index == index)


def partition_path(disk: str, number: int) -> str:
    """/dev node of partition ``number``: sda1, vdb2, but nvme0n1p1, loop0p1, md0p1.

    The kernel's rule (also agent.disk.reread's): a "p" goes between a disk name
    ending in a digit and the number.
    """
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


def boot_room_mb(boot_mode: str, label: str, cpu_arch: str | None = None) -> int:
    """MiB to leave after the first MiB of every member for the later boot partition."""
    if boot_mode == "uefi":
        return ESP_MB
    if (cpu_arch or "").startswith("ppc64"):
        return PREP_MB
    return BIOS_BOOT_MB if label == "gpt" else 0


def data_share(level: str, members: int) -> tuple[int, int]:
    """(numerator, denominator): array bytes = member bytes * num / den."""
    if level == "0":
        return members, 1
    if level == "1":
        return 1, 1
    if level == "1+0":
        return members, 2            # mdadm raid10, layout near=2: two copies of each chunk
    if level == "5":
        return members - 1, 1
    return members - 2, 1            # "6"


def _align_down(value: int) -> int:
    return value // MiB * MiB


def _limit(disk: Disk, label: str) -> int:
    """End (exclusive, bytes) of the space holders may use on ``disk``."""
    end = _align_down(disk.size - EDGE)
    if label == "msdos":
        # an MBR entry counts sectors in 32 bits
        end = min(end, _align_down(pt.MBR_MAX_SECTORS * disk.logical_sectors))
    return end


def _md_names(count: int, taken: Collection[str]) -> list[str]:
    names: list[str] = []
    number = 0
    while len(names) < count:
        name = f"/dev/md{number}"
        if name not in taken and f"md{number}" not in taken:
            names.append(name)
        number += 1
    return names


def make_plan(logical_disks: Sequence[LogicalDisk], members: Mapping[int, Sequence[Disk]], *,
              boot_mode: str = "bios", label: str | None = None, cpu_arch: str | None = None,
              taken_md: Collection[str] = ()) -> Plan:
    """Lay out every volume; raise InvalidCommandParamsError when something does not fit."""
    if boot_mode not in ("bios", "uefi"):
        raise InvalidCommandParamsError("boot mode must be 'bios' or 'uefi'")
    label = label or ("gpt" if boot_mode == "uefi" else "msdos")
    if label not in ("gpt", "msdos"):
        raise InvalidCommandParamsError("disk label must be 'gpt' or 'msdos'")
    room = boot_room_mb(boot_mode, label, cpu_arch) * MiB
    all_disks: dict[str, Disk] = {}
    for ld in logical_disks:
        for disk in members[ld.index]:
            all_disks.setdefault(disk.name, disk)
    errors: list[str] = []
    for disk in all_disks.values():
        ss = disk.logical_sectors
        if ss <= 0 or ss & (ss - 1) or MiB % ss:
            errors.append(f"{disk.name} reports a logical sector size of {ss} bytes")
    if errors:
        raise InvalidCommandParamsError("; ".join(errors))
    cursor = {name: EDGE + room for name in all_disks}
    limit = {name: _limit(disk, label) for name, disk in all_disks.items()}
    holders: dict[str, list[Holder]] = {name: [] for name in all_disks}
    md = _md_names(len(logical_disks), taken_md)
    arrays: list[ArrayPlan] = []
    # fixed sizes first, the one MAX volume last: it takes what the others leave
    for ld in sorted(logical_disks, key=lambda x: (x.is_max, x.index)):
        disks = list(members[ld.index])
        num, den = data_share(ld.raid_level, len(disks))
        if ld.size_gb is not None:
            want = ld.size_gb * GIB
            member = -(-(want * den) // num)
            member = -(-member // MiB) * MiB
            short = [d.name for d in disks if cursor[d.name] + MD_DATA_OFFSET + member
                     > limit[d.name]]
            if short:
                errors.append(_does_not_fit(ld, short, member, cursor, limit))
        else:
            free = min(limit[d.name] - cursor[d.name] for d in disks)
            member = _align_down(free - MD_DATA_OFFSET)
            if member <= 0:
                errors.append(f"{ld.label}: size_gb \"MAX\" finds no space left on "
                              f"{', '.join(d.name for d in disks)} after the other volumes "
                              "and the boot partition")
        if member <= 0 or errors:
            continue
        parts = []
        for disk in disks:
            number = len(holders[disk.name]) + 1
            holder = Holder(disk=disk.name, number=number, start=cursor[disk.name],
                            size=MD_DATA_OFFSET + member,
                            path=partition_path(disk.name, number), array=ld.index)
            holders[disk.name].append(holder)
            cursor[disk.name] = holder.end
            parts.append(holder.path)
        arrays.append(ArrayPlan(
            index=ld.index, md_device=md[ld.index], raid_level=ld.raid_level,
            volume_name=ld.volume_name, is_root_volume=ld.is_root_volume,
            requested_gb=ld.size_gb, members=tuple(parts),
            member_disks=tuple(d.name for d in disks), member_size=member,
            size=member * num // den))
    if errors:
        raise InvalidCommandParamsError("the software RAID volumes do not fit: "
                                        + "; ".join(errors))
    layouts = tuple(DiskLayout(disk=name, sector_size=all_disks[name].logical_sectors,
                               size=all_disks[name].size, boot_room=(EDGE, room),
                               holders=tuple(holders[name])) for name in all_disks)
    return Plan(boot_mode=boot_mode, label=label, disks=layouts,
                arrays=tuple(sorted(arrays, key=lambda a: a.index)))


def _does_not_fit(ld: LogicalDisk, short: list[str], member: int, cursor: Mapping[str, int],
                  limit: Mapping[str, int]) -> str:
    need = (member + MD_DATA_OFFSET) // MiB
    have = ", ".join(f"{name} has {max(limit[name] - cursor[name], 0) // MiB} MiB"
                     for name in short)
    return (f"{ld.label}: RAID-{ld.raid_level} of {ld.size_gb} GiB needs a {need} MiB "
            f"holder partition on each member, but {have} free")
