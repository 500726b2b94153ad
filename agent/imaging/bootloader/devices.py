"""Find the partitions the bootloader paths need: ESP, PReP and root.

The conductor passes UUIDs in whatever form the deploy recorded them: a
filesystem UUID (root, ESP), a GPT partition GUID, or an MBR PARTUUID
(``<disk signature>-<number>``).  A partition matches when any of these
equals the given value, compared case-insensitively.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from agent import tools
from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import DeviceNotFound

LOG = logging.getLogger(__name__)

WHOLE_DISK_ID = re.compile(r"^0x[0-9a-fA-F]{8}$")


@dataclasses.dataclass(frozen=True)
class DiskPartition:
    partition: pt.Partition
    node: str            # /dev node

    @property
    def number(self) -> int:
        return self.partition.number


class DiskView:
    """The install disk's table and partition nodes, with lazily probed filesystem UUIDs."""

    def __init__(self, disk: str) -> None:
        self.disk = disk
        self.table = pt.read_table(disk)
        if self.table.kind is None:
            raise DeviceNotFound(f"{disk} has no partition table "
                                 f"({'; '.join(self.table.problems) or 'none found'})")
        nodes = {p.number: reread.partition_device(disk, p.number)
                 for p in self.table.partitions}
        if not all(os.path.exists(n) for n in nodes.values()):
            # the kernel has not (yet) taken this table: make it, so the nodes exist
            nodes = reread.reread(disk, table=self.table).partitions
        self.partitions = [DiskPartition(p, nodes[p.number]) for p in self.table.partitions
                           if p.mbr_role != "extended"]
        self._fs_uuids: dict[str, str | None] = {}

    def partuuid(self, part: DiskPartition) -> str:
        if self.table.kind == "gpt" and part.partition.unique_guid:
            return part.partition.unique_guid
        return f"{self.table.disk_signature:08x}-{part.number:02x}"

    def fs_uuid(self, part: DiskPartition) -> str | None:
        if part.node not in self._fs_uuids:
            self._fs_uuids[part.node] = probe_fs_uuid(part.node)
        return self._fs_uuids[part.node]

    def by_uuid(self, value: str) -> DiskPartition | None:
        wanted = value.strip().lower()
        for part in self.partitions:
            if self.partuuid(part).lower() == wanted:
                return part
        for part in self.partitions:
            if (self.fs_uuid(part) or "").lower() == wanted:
                return part
        return None

    def by_type(self, gpt_guid: str, mbr_type: int) -> list[DiskPartition]:
        if self.table.kind == "gpt":
            return [p for p in self.partitions if p.partition.type_guid == gpt_guid]
        return [p for p in self.partitions if p.partition.mbr_type == mbr_type]

    def describe(self) -> str:
        return ", ".join(f"{p.node} (type {p.partition.type_guid or hex(p.partition.mbr_type or 0)}"
                         f", PARTUUID {self.partuuid(p)})" for p in self.partitions) or "none"


def probe_fs_uuid(node: str) -> str | None:
    """Filesystem UUID from a low-level probe (no blkid cache, no udev)."""
    proc = tools.run("blkid", "-p", "-o", "value", "-s", "UUID", node, check=False,
                     timeout=60.0)
    if proc.returncode != 0:
        return None   # 2: nothing recognisable on it
    return proc.stdout.strip() or None


def is_whole_disk_id(root_uuid: str | None) -> bool:
    """A null root UUID or an MBR disk signature: the image carries its own boot loader."""
    return root_uuid is None or bool(WHOLE_DISK_ID.match(root_uuid.strip()))


def find_root(view: DiskView, root_uuid: str) -> str:
    """The device holding the root filesystem: on the install disk, else anywhere (md, LVM)."""
    part = view.by_uuid(root_uuid)
    if part is not None:
        return part.node
    # software RAID and LVM roots live on a device built from the disk, not on a partition
    proc = tools.run("blkid", "-c", "/dev/null", "-o", "device", "-U", root_uuid.strip(),
                     check=False, timeout=60.0)
    device = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and \
        proc.stdout.strip() else None
    if device:
        LOG.info("root filesystem %s found on %s, outside the partitions of %s", root_uuid,
                 device, view.disk)
        return device
    raise DeviceNotFound(f"No partition with UUID {root_uuid} was found on {view.disk} or any "
                         f"other block device; partitions of {view.disk}: {view.describe()}")
