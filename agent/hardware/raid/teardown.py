"""Delete software RAID: stop every array, zero member superblocks, remove the holders.

``prepare`` decides everything and refuses, writing nothing, when an array or
a holder disk is in use (mounted, swap, LVM on it, open).  ``run`` then:

1. stops the running arrays and zeroes their members' superblocks (mdadm);
2. zeroes every other md superblock found on the usable disks (arrays that
   were never assembled: no driver, or a set with members missing);
3. on each disk that held a member: when nothing but holders and boot
   partitions (ESP, BIOS boot, PReP) is on it, wipes the table and every
   signature so the disk is left with no partition table; otherwise deletes
   only the holder partitions and keeps the rest.

A failure says which of these steps were done, disk by disk.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from agent import tools
from agent.context import CommandContext
from agent.disk import blockdev, reread
from agent.disk import partition_table as pt
from agent.disk.usage import UsageSnapshot
from agent.errors import AgentError, CleaningError, ToolMissing, UnsafeDevice
from agent.hardware.disks import Disk, list_partitions
from agent.hardware.erase_guards import array_refusal_reasons, in_use_reasons
from agent.hardware.raid import arrays as md_arrays
from agent.hardware.raid import mdadm, scan
from agent.hardware.raid.arrays import MdArray
from agent.hardware.raid.pool import Pool

LOG = logging.getLogger(__name__)
RAID_GUID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
MBR_RAID = 0xFD
BOOT_GUIDS = {pt.ESP_GUID, pt.BIOS_BOOT_GUID, pt.PREP_GUID}
BOOT_MBR = {pt.MBR_ESP, pt.MBR_PREP}
HOLDER_HEAD = 1 << 20          # superblock and bitmap room at the front of a holder


@dataclasses.dataclass
class DiskWork:
    disk: Disk
    holders: list[int]                 # partition numbers holding md members
    superblocks: list[scan.Found]      # to zero (running arrays' members included)
    wipe: bool                         # nothing else on it: leave no table
    table: pt.PartitionTable

    def describe(self) -> str:
        if self.wipe:
            return f"{self.disk.name}: wipe the partition table"
        return (f"{self.disk.name}: remove holder partition(s) "
                f"{', '.join(map(str, self.holders))}, keep the others")


@dataclasses.dataclass
class Teardown:
    stop: list[MdArray]
    disks: list[DiskWork]

    @property
    def empty(self) -> bool:
        return not self.stop and not self.disks


def _is_holder(part: pt.Partition, found: Sequence[scan.Found], members: set[int]) -> bool:
    if part.number in members or any(f.partition == part.number for f in found):
        return True
    return (part.type_guid or "").lower() == RAID_GUID or part.mbr_type == MBR_RAID


def _is_boot(part: pt.Partition) -> bool:
    return (part.type_guid or "").lower() in BOOT_GUIDS or part.mbr_type in BOOT_MBR


def _member_numbers(arrays: Sequence[MdArray], disk: str) -> tuple[set[int], bool]:
    """Partition numbers of ``disk`` that are members, and whether the disk itself is one."""
    numbers: set[int] = set()
    whole = False
    for array in arrays:
        for member in array.members:
            if member == disk:
                whole = True
                continue
            try:
                parent, number = reread.partition_parent(member)
            except AgentError:
                continue
            if parent == disk:
                numbers.add(number)
    return numbers, whole


def _disk_work(disk: Disk, stopping: Sequence[MdArray]) -> DiskWork | None:
    table, found = scan.scan_disk(disk.name)
    members, whole = _member_numbers(stopping, disk.name)
    holders = sorted(p.number for p in table.partitions
                     if p.mbr_role != "extended" and _is_holder(p, found, members))
    if not holders and not found and not whole:
        return None
    # an extended partition only contains logical ones: it is not "something else"
    others = [p for p in table.partitions if p.number not in holders
              and p.mbr_role != "extended" and not _is_boot(p)]
    return DiskWork(disk=disk, holders=holders, superblocks=found,
                    wipe=whole or not others, table=table)


def prepare(pool: Pool, *, usage: UsageSnapshot | None = None,
            guard_shared: bool = True) -> Teardown:
    """What delete_configuration will do; raise UnsafeDevice (nothing written) if unsafe."""
    usage = usage if usage is not None else UsageSnapshot()
    stopping = pool.others
    refused: list[str] = []
    usable = {d.name for d in pool.disks}
    for array in stopping:
        label = array.device + (f" ({array.volume_name})" if array.volume_name else "")
        for name in array.member_disks:
            if name not in usable:
                refused.append(f"md array {label} also lies on {name} "
                               f"({pool.skipped.get(name, 'not a usable disk')}); stopping "
                               "it would break it there")
        refused += [f"md array {label} cannot be stopped: {why}"
                    for why in array_refusal_reasons(array, usage, guard_shared=guard_shared)]
    work = [w for d in pool.disks if (w := _disk_work(d, stopping)) is not None]
    names = {a.kname for a in stopping}
    for item in work:
        reasons = in_use_reasons(item.disk, list_partitions(item.disk), usage, stopping=names)
        if reasons:
            refused.append(f"{item.disk.name}: {'; '.join(reasons)}")
    if refused:
        raise UnsafeDevice("refusing to delete the software RAID configuration; nothing "
                           "was changed: " + " | ".join(refused))
    if stopping and tools.which(mdadm.TOOL) is None:
        raise ToolMissing("mdadm is not installed (Debian package mdadm); it is needed to "
                          f"stop {', '.join(a.device for a in stopping)}")
    return Teardown(stop=stopping, disks=work)


def _remove_holders(item: DiskWork) -> None:
    disk = item.disk.name
    fd_parts = [p for p in item.table.partitions if p.number in item.holders]
    # the holder's head carries the superblock and, for metadata 1.0 mirrors, a
    # filesystem that firmware would still find: both go before the entry does
    with open(disk, "r+b", buffering=0) as f:
        for part in fd_parts:
            f.seek(part.start_bytes)
            f.write(bytes(min(HOLDER_HEAD, part.size_bytes)))
    if item.wipe:
        tools.run("wipefs", "--all", "--force", disk)
        blockdev.zero_edges(disk)
    elif item.table.kind == "gpt":
        tools.run("sgdisk", *[f"--delete={n}" for n in item.holders], disk)
    else:
        tools.run("sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", "--delete", disk,
                  *map(str, item.holders))
    reread.reread(disk)


def _done_line(item: DiskWork) -> str:
    if item.wipe:
        return f"{item.disk.name}: no partition table left"
    return f"{item.disk.name}: holder partition(s) {', '.join(map(str, item.holders))} removed"


def run(plan: Teardown, ctx: CommandContext | None = None, *,
        error_cls: type[AgentError] = CleaningError) -> dict[str, Any]:
    """Carry out ``plan``; a failure (``error_cls``) names what was done and what was not."""
    done: list[str] = []
    left = ([f"stop {', '.join(a.device for a in plan.stop)}"] if plan.stop else []) + [
        w.describe() for w in plan.disks]
    if ctx is not None:
        ctx.progress.update(phase="delete_configuration", done=0, total=len(left))
    try:
        if plan.stop:
            md_arrays.stop_and_forget(plan.stop)
            done.append(f"stopped {', '.join(a.device for a in plan.stop)} and zeroed their "
                        "members' superblocks")
            left.pop(0)
        for item in plan.disks:
            if ctx is not None:
                ctx.progress.update(done=len(done), current=item.disk.name)
            scan.zero(item.disk.name, item.superblocks)
            _remove_holders(item)
            done.append(_done_line(item))
            left.pop(0)
    except (AgentError, OSError) as exc:
        details = exc.details if isinstance(exc, AgentError) else str(exc)
        raise error_cls(
            f"deleting the software RAID configuration failed: {details}. Done before the "
            f"failure: {'; '.join(done) or 'nothing'}. Not done: {'; '.join(left)}"
        ) from None
    LOG.info("software RAID deleted: %s", "; ".join(done) or "nothing to delete")
    return {
        "arrays_stopped": [a.device for a in plan.stop],
        "disks_wiped": [w.disk.name for w in plan.disks if w.wipe],
        "holders_removed": {w.disk.name: w.holders for w in plan.disks if not w.wipe},
        "superblocks_zeroed": [f.describe() for w in plan.disks for f in w.superblocks],
    }
