"""Which partition an inject_files entry names, found without mounting anything.

The install disk's partitions come from sysfs (the kernel's view; re-read
once when it shows none) and each is probed with ``blkid -p`` (no cache, no
udev) for its filesystem type, UUID and label and its table entry's UUID and
name.  A partition spec is then matched against those facts only:

* a number is the partition with that index on the install disk;
* a /dev path is that block device (a symlink such as by-partlabel followed);
* any other string is a filesystem UUID or label, or a GPT partition UUID or
  name, and must match exactly one partition;
* a hints object (``number``, ``name``, ``uuid``, ``partuuid``, ``label``,
  ``partlabel``, ``fstype``) takes the root-device-hint string operators
  (``s==``, ``<in>``, ``<or>``...) and must match exactly one partition.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from agent import tools
from agent.disk import reread
from agent.errors import AgentError, DeviceNotFound, InvalidCommandParamsError, ToolError
from agent.hardware import disks, hints

LOG = logging.getLogger(__name__)

# filesystems the agent can write: mounted, or (vfat) through mtools
MOUNTED_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
WRITABLE_FS = (*MOUNTED_FS, "vfat")


@dataclasses.dataclass(frozen=True)
class Target:
    node: str                     # /dev/sda2
    number: int | None
    fstype: str | None
    uuid: str | None = None
    label: str | None = None
    partuuid: str | None = None
    partlabel: str | None = None

    @property
    def writable(self) -> bool:
        return self.fstype in WRITABLE_FS

    @property
    def mtools(self) -> bool:
        return self.fstype == "vfat"

    def describe(self) -> str:
        bits = [f"{self.node}", f"number={self.number}", f"fstype={self.fstype}"]
        bits += [f"{k}={getattr(self, k)}" for k in ("label", "partlabel")
                 if getattr(self, k)]
        return " ".join(bits)

    def values(self, key: str) -> list[str]:
        if key == "number":
            return [str(self.number)] if self.number is not None else []
        if key == "name":
            return [self.node]
        value = getattr(self, key)
        return [value] if value else []


def probe(node: str, number: int | None = None) -> Target:
    """What ``blkid -p`` knows about ``node``: filesystem and partition-table identity."""
    try:
        proc = tools.run("blkid", "-p", "-o", "export", node, ok_codes=(0, 2), timeout=60.0)
    except ToolError as exc:
        LOG.warning("blkid could not probe %s: %s", node, exc.details)
        return Target(node=node, number=number, fstype=None)
    info = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if number is None and info.get("PART_ENTRY_NUMBER", "").isdigit():
        number = int(info["PART_ENTRY_NUMBER"])
    return Target(node=node, number=number, fstype=info.get("TYPE"),
                  uuid=info.get("UUID"), label=info.get("LABEL"),
                  partuuid=info.get("PART_ENTRY_UUID"), partlabel=info.get("PART_ENTRY_NAME"))


def disk_targets(disk: disks.Disk) -> list[Target]:
    """Every partition of the install disk, probed, in partition-number order."""
    found = disks.list_partitions(disk)
    if not found:
        try:
            # a table written since the kernel last looked: bring the kernel up to date
            reread.reread(disk.name)
        except AgentError as exc:
            LOG.warning("could not re-read the partition table of %s: %s", disk.name,
                        exc.details)
        found = disks.list_partitions(disk)
    targets = []
    for part in found:
        try:
            _, number = reread.partition_parent(part.name)
        except AgentError:
            number = None
        targets.append(probe(part.name, number))
    return sorted(targets, key=lambda t: (t.number is None, t.number or 0, t.node))


def _by_path(spec: str, targets: Sequence[Target]) -> Target:
    real = os.path.realpath(spec)
    try:
        is_block = stat.S_ISBLK(os.stat(real).st_mode)
    except OSError:
        is_block = False
    if not is_block:
        raise DeviceNotFound("no block device exists at the given partition path")
    for target in targets:
        if os.path.realpath(target.node) == real:
            return target
    # IPA takes any block device path; it need not be on the install disk
    try:
        _, number = reread.partition_parent(real)
    except AgentError:
        number = None
    return probe(real, number)


def _by_identifier(spec: str, targets: Sequence[Target]) -> list[Target]:
    wanted = spec.lower()
    return [t for t in targets
            if any(v.lower() == wanted for v in (t.uuid, t.partuuid) if v)
            or spec in (t.label, t.partlabel)]


def parse_hints(spec: Mapping[str, Any]) -> list[hints.Hint]:
    """The hints object parsed with the root-device-hint operators."""
    parsed = []
    for key, value in spec.items():
        text = str(value) if key == "number" else value
        try:
            parsed.append(hints._parse_string(key, text))
        except AgentError:
            raise InvalidCommandParamsError(f"partition hint '{key}' has an unusable "
                                            "operator or value") from None
    return parsed


def _by_hints(spec: Mapping[str, Any], targets: Sequence[Target]) -> list[Target]:
    parsed = parse_hints(spec)
    return [t for t in targets
            if all(any(hints._match_string(h, hints._normalise_string(v))
                       for v in t.values(h.key)) for h in parsed)]


def resolve(spec: int | str | Mapping[str, Any], targets: Sequence[Target],
            disk_name: str) -> Target:
    """The one partition ``spec`` names; DeviceNotFound naming what was seen otherwise."""
    if isinstance(spec, int):
        matches = [t for t in targets if t.number == spec]
        what = f"partition number {spec}"
    elif isinstance(spec, str) and spec.startswith("/"):
        return _by_path(spec, targets)
    elif isinstance(spec, str):
        matches = _by_identifier(spec, targets)
        what = "the given UUID or label"
    else:
        matches = _by_hints(spec, targets)
        what = f"the partition hints ({', '.join(sorted(spec))})"
    if len(matches) == 1:
        return matches[0]
    seen = "; ".join(t.describe() for t in targets) or "no partitions"
    if not matches:
        raise DeviceNotFound(f"no partition of {disk_name} matches {what}; seen: {seen}")
    raise DeviceNotFound(f"{what} matches {len(matches)} partitions of {disk_name} "
                         f"({', '.join(t.node for t in matches)}); name exactly one")
