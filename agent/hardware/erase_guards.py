"""Safety checks run on every disk before any erase method touches any disk.

Ironic's virtual media (the ``ir-vfd-dev`` image, the read-only ISO the
ramdisk booted from) is skipped, not refused: it is not the node's data.
A disk is refused when it is in use (``agent.disk.usage``: mounted, swap,
held by md/dm, or open by a process other than udev's probers), read-only
(unless the node says to skip those), or carries a shared-SAN filesystem —
VMFS, GPFS or GFS2, by signature or by partition type — because erasing a
LUN shared with other hosts destroys their data.

An md array holding a disk is not a reason by itself when the erase stops
that array first (``stopping``); the array is then checked instead, as a
whole: mounted, swap, held (LVM on md), open, or a shared-SAN filesystem
inside it all refuse the erase.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable, Sequence

from agent import tools
from agent.disk import partition_table, vmedia
from agent.disk.usage import Node, UsageSnapshot, Use
from agent.errors import AgentError
from agent.hardware import hints
from agent.hardware.disks import Disk, Partition, list_partitions
from agent.hardware.raid.arrays import MdArray

LOG = logging.getLogger(__name__)

SHARED_FS_TYPES = {"vmfs": "VMFS", "vmfs_volume_member": "VMFS", "vmfs3": "VMFS",
                   "gfs": "GFS", "gfs2": "GFS2", "gpfs": "GPFS"}
SHARED_PART_TYPES = {
    "AA31E02A-400F-11DB-9590-000C2911D1B8": "VMFS",
    "9D275380-40AD-11DB-BF97-000C2911D1B8": "VMware vmkcore",
    "9198EFFC-31C0-11DB-8F78-000C2911D1B8": "VMware reserved",
    "37AFFC90-EF7D-4E96-91C3-2D7AE055B174": "IBM GPFS",
    "0xfb": "VMFS", "0xfc": "VMware vmkcore",
}


_HOLDER_NODE = re.compile(r"/dev/(\S+)")


def _stopped_holder(use: Use, stopping: Collection[str]) -> bool:
    if use.kind != "holder":
        return False
    match = _HOLDER_NODE.search(use.detail)
    return bool(match and match.group(1) in stopping)


def in_use_reasons(disk: Disk, parts: Iterable[Partition], usage: UsageSnapshot, *,
                   stopping: Collection[str] = ()) -> list[str]:
    """Why ``disk`` or one of ``parts`` is in use, node by node (empty: idle).

    ``stopping``: kernel names of md arrays the caller stops first; their hold
    on a member is no reason.
    """
    nodes = [Node(disk.name, os.makedev(*disk.devno), disk.sysfs_path)] + [
        Node(p.name, os.makedev(*p.devno),
             os.path.join(disk.sysfs_path, os.path.basename(p.name)))
        for p in parts]
    return [use.describe() for use in usage.uses_of(nodes)
            if not _stopped_holder(use, stopping)]


def _probe(device: str, offset: int | None = None, size: int | None = None) -> dict[str, str]:
    args: list[object] = ["-p", "-o", "export"]
    if offset is not None:
        args += ["-O", offset, "-S", size]
    try:
        out = tools.run("blkid", *args, device, ok_codes=(0, 2), timeout=60).stdout
    except AgentError as exc:
        LOG.warning("blkid could not probe %s: %s", device, exc)
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def shared_san_reasons(disk: Disk, parts: Iterable[Partition]) -> list[str]:
    reasons = []
    probes = [(disk.name, _probe(disk.name))]
    probes += [(p.name, _probe(p.name)) for p in parts]
    try:
        entries = partition_table.read_table(disk.name).partitions
    except OSError as exc:
        LOG.warning("cannot read the partition table of %s: %s", disk.name, exc)
        entries = []
    for entry in entries:
        code = (entry.type_guid.upper() if entry.type_guid
                else f"0x{entry.mbr_type or 0:02x}")
        label = SHARED_PART_TYPES.get(code)
        if label:
            reasons.append(f"partition {entry.number} of {disk.name} has the {label} "
                           f"partition type {code}")
        # the kernel may not expose the partition: probe its range on the disk itself
        probes.append((f"{disk.name} partition {entry.number}",
                       _probe(disk.name, entry.start_bytes, entry.size_bytes)))
    for where, found in probes:
        fstype = (found.get("TYPE") or "").lower()
        if fstype in SHARED_FS_TYPES:
            reasons.append(f"{where} carries a {SHARED_FS_TYPES[fstype]} signature "
                           f"({found['TYPE']})")
    return reasons


SKIP_LISTED = "listed in properties.skip_block_devices"


def skip_reason(disk: Disk, skip_parsed: Sequence[Sequence[hints.Hint]]) -> str | None:
    """Why a disk-wide step leaves ``disk`` alone: the node's skip list or virtual media.

    Asked before the read-only check: the boot ISO is read-only and is skipped, not refused.
    """
    if hints.skipped_by(disk, skip_parsed):
        return SKIP_LISTED
    return virtual_media_reason(disk)


def virtual_media_reason(disk: Disk) -> str | None:
    """Why ``disk`` is skipped as Ironic's virtual media (the vfd image or the boot ISO)."""
    medium = vmedia.classify(disk.name, read_only=disk.read_only, kname=disk.kname)
    return vmedia.reason(medium) if medium is not None else None


def refusal_reasons(disk: Disk, usage: UsageSnapshot, *, guard_shared: bool,
                    stopping: Collection[str] = ()) -> list[str]:
    """Every reason ``disk`` must not be erased (empty: safe to erase)."""
    parts = list_partitions(disk)
    reasons = in_use_reasons(disk, parts, usage, stopping=stopping)
    if guard_shared:
        reasons += shared_san_reasons(disk, parts)
    return reasons


def _present(device: str) -> bool:
    return os.path.exists(device)


def array_as_disk(array: MdArray) -> Disk:
    """An md array as the Disk the listing would show (skip lists match on it)."""
    return Disk(name=array.device, size=array.size, kname=array.kname,
                devno=array.devno or (0, 0), kind="md", sysfs_path=array.sysfs_dir,
                volume_name=array.volume_name, aliases=array.links,
                member_disks=array.member_disks)


def array_refusal_reasons(array: MdArray, usage: UsageSnapshot, *,
                          guard_shared: bool) -> list[str]:
    """Every reason the erase must not stop ``array`` (empty: safe to stop)."""
    if array.devno is None:
        return []
    disk = array_as_disk(array)
    parts = list_partitions(disk)
    reasons = in_use_reasons(disk, parts, usage)
    # a stopped array's contents are gone from view: look inside while it runs
    if guard_shared and array.size > 0 and _present(array.device):
        reasons += shared_san_reasons(disk, parts)
    return reasons
