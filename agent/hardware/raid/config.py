"""Validate a ``target_raid_config`` for software RAID, before any disk is touched.

The shape is Ironic's RAID schema restricted to what mdadm builds here:
``logical_disks`` with ``size_gb`` (whole GiB or ``"MAX"``), ``raid_level``
``0``, ``1``, ``1+0``, ``5`` or ``6``, ``controller: "software"``, and optionally
``physical_disks`` (root-device-hint dicts), ``volume_name`` and
``is_root_volume``.  Every problem found is reported at once, as an
``InvalidCommandParamsError`` (400), naming logical disks by position and hint
keys by name but never repeating the values the caller sent.

Member selection follows IPA: each ``physical_disks`` entry takes the first
matching disk, in listing order, not already taken by an earlier entry of the
same logical disk; a logical disk without ``physical_disks`` spans every
candidate disk.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import AgentError, InvalidCommandParamsError
from agent.hardware import hints
from agent.hardware.disks import Disk

SOFTWARE = "software"
# fewest members per level.  IPA accepts software RAID only on at least two
# physical disks for any level, 3 for RAID-5 and 4 for RAID-6.  "1+0" means
# striped mirrors (Ironic's redfish driver spans RAID-1 pairs), so it needs 4;
# mdadm would make a 2-disk raid10, but that is a plain mirror by another name.
MIN_DISKS = {"0": 2, "1": 2, "1+0": 4, "5": 3, "6": 4}
# the ``--level`` mdadm knows each schema level by
MDADM_LEVEL = {"0": "0", "1": "1", "1+0": "10", "5": "5", "6": "6"}
# IPA builds one or two software RAID volumes; the later deploy (root volume,
# config drive, boot partitions on every member) is designed for that many
MAX_VOLUMES = 2
MAX = "MAX"
# mdadm keeps "homehost:name" in a 32-byte field; a bare name this long and made
# of these characters survives udev (/dev/md/NAME) and the superblock alike
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_KNOWN_KEYS = {"size_gb", "raid_level", "controller", "physical_disks", "volume_name",
               "is_root_volume", "share_physical_disks", "disk_type", "interface_type",
               "number_of_physical_disks"}


@dataclasses.dataclass(frozen=True)
class LogicalDisk:
    """One validated logical disk, in the caller's order (``index`` from 0)."""

    index: int
    raid_level: str
    size_gb: int | None            # None means MAX
    volume_name: str
    is_root_volume: bool
    physical_disks: tuple[tuple[hints.Hint, ...], ...] | None
    raw: Mapping[str, Any]         # the caller's dict, echoed back in the result

    @property
    def is_max(self) -> bool:
        return self.size_gb is None

    @property
    def label(self) -> str:
        """How errors name it: position, and its volume name."""
        return f"logical disk {self.index + 1} ({self.volume_name})"


def software_requested(raid_config: Any) -> bool:
    """True when any logical disk asks for the software controller (IPA's trigger)."""
    if not isinstance(raid_config, Mapping):
        return False
    disks = raid_config.get("logical_disks")
    return isinstance(disks, list) and any(
        isinstance(ld, Mapping) and ld.get("controller") == SOFTWARE for ld in disks)


def _size(value: Any) -> int | None | str:
    """Whole GiB, None for MAX, or an error text."""
    if value == MAX:
        return None
    if isinstance(value, bool):
        return "size_gb must be a whole number of GiB or \"MAX\""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        return "size_gb must be a whole number of GiB or \"MAX\""
    if value <= 0:
        return "size_gb must be greater than 0"
    return value


def _hint_error_keys(entry: Mapping[str, Any]) -> list[str]:
    """The keys of one hint dict that do not parse, checked one by one."""
    bad = []
    for key in entry:
        try:
            hints.parse_hints({key: entry[key]})
        except AgentError:
            bad.append(str(key)[:40])
    return bad


def _physical_disks(value: Any, level: str | None, errors: list[str], where: str
                    ) -> tuple[tuple[hints.Hint, ...], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        errors.append(f"{where}: physical_disks must be a list of root-device-hint objects")
        return None
    need = MIN_DISKS.get(level or "", 2)
    if len(value) < need:
        errors.append(f"{where}: physical_disks names {len(value)} disk(s); RAID-{level} "
                      f"needs at least {need}")
    parsed = []
    for number, entry in enumerate(value, 1):
        if not entry:
            errors.append(f"{where}: physical_disks entry {number} is empty; it would match "
                          "any disk")
            continue
        bad = _hint_error_keys(entry)
        if bad:
            errors.append(f"{where}: physical_disks entry {number}: hint(s) "
                          f"{', '.join(sorted(bad))} are unknown or have an invalid value "
                          f"(valid hints: {', '.join(hints.VALID_HINTS)})")
            continue
        parsed.append(tuple(hints.parse_hints(entry)))
    return tuple(parsed)


def _logical_disk(index: int, ld: Any, errors: list[str]) -> LogicalDisk | None:
    where = f"logical disk {index + 1}"
    if not isinstance(ld, Mapping):
        errors.append(f"{where} must be an object")
        return None
    unknown = sorted(str(k)[:40] for k in set(ld) - _KNOWN_KEYS)
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(unknown)}")
    if ld.get("controller") != SOFTWARE:
        errors.append(f"{where} does not ask for controller \"software\"; this agent builds "
                      "only software RAID and every logical disk must ask for it")
    level = ld.get("raid_level")
    if not isinstance(level, str) or level not in MIN_DISKS:
        errors.append(f"{where}: raid_level is missing or not supported for software RAID "
                      f"(supported: {', '.join(MIN_DISKS)})")
        level = None
    size = _size(ld.get("size_gb")) if "size_gb" in ld else "size_gb is required"
    if isinstance(size, str):
        errors.append(f"{where}: {size}")
    name = ld.get("volume_name", f"md{index}")
    if not isinstance(name, str) or not _VOLUME_NAME.match(name):
        errors.append(f"{where}: volume_name must be 1 to 32 letters, digits, '.', '_' or "
                      "'-', starting with a letter or digit")
        name = f"md{index}"
    root = ld.get("is_root_volume", False)
    if not isinstance(root, bool):
        errors.append(f"{where}: is_root_volume must be true or false")
        root = False
    physical = _physical_disks(ld.get("physical_disks"), level, errors, where)
    if level is None or isinstance(size, str):
        return None
    return LogicalDisk(index=index, raid_level=level, size_gb=size, volume_name=name,
                       is_root_volume=root, physical_disks=physical, raw=dict(ld))


def validate(raid_config: Any) -> list[LogicalDisk]:
    """Check the whole configuration; raise InvalidCommandParamsError listing every problem."""
    if not isinstance(raid_config, Mapping):
        raise InvalidCommandParamsError("the RAID configuration must be an object with "
                                        "logical_disks")
    extra = sorted(str(k)[:40] for k in set(raid_config) - {"logical_disks"})
    lds = raid_config.get("logical_disks")
    if not isinstance(lds, list) or not lds:
        raise InvalidCommandParamsError("the RAID configuration has no logical_disks")
    errors: list[str] = []
    if extra:
        errors.append(f"unknown key(s) {', '.join(extra)}")
    if len(lds) > MAX_VOLUMES:
        errors.append(f"{len(lds)} logical disks were asked for; software RAID builds at most "
                      f"{MAX_VOLUMES}")
    parsed = [p for i, ld in enumerate(lds) if (p := _logical_disk(i, ld, errors))]
    if sum(1 for p in parsed if p.is_max) > 1:
        errors.append("more than one logical disk has size_gb \"MAX\"; only one can take the "
                      "rest of the disks")
    names = [p.volume_name for p in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append(f"volume_name {', '.join(duplicates)} is used more than once")
    if sum(1 for p in parsed if p.is_root_volume) > 1:
        errors.append("more than one logical disk has is_root_volume true")
    if errors:
        raise InvalidCommandParamsError("invalid software RAID configuration: "
                                        + "; ".join(errors))
    return parsed


def candidates(disks: Sequence[Disk]) -> list[Disk]:
    """Disks a volume may use: never an md array itself, never a read-only device."""
    return [d for d in disks if d.kind != "md" and not d.read_only]


def select_members(logical_disks: Sequence[LogicalDisk], disks: Sequence[Disk]
                   ) -> dict[int, list[Disk]]:
    """Member disks per logical disk index; raise when hints match nothing or too few disks."""
    pool = candidates(disks)
    errors: list[str] = []
    chosen: dict[int, list[Disk]] = {}
    for ld in logical_disks:
        unmatched = False
        if ld.physical_disks is None:
            members = list(pool)
        else:
            members = []
            for number, parsed in enumerate(ld.physical_disks, 1):
                matching = [d for d in pool if hints.matches(d, parsed)]
                free = [d for d in matching if d not in members]
                if not matching:
                    errors.append(f"{ld.label}: physical_disks entry {number} matches none of "
                                  f"the {len(pool)} usable disk(s)")
                elif not free:
                    errors.append(f"{ld.label}: physical_disks entry {number} matches only "
                                  "disks already taken by earlier entries")
                else:
                    members.append(free[0])
                    continue
                unmatched = True
        need = MIN_DISKS[ld.raid_level]
        # an entry that matched nothing already explains why there are too few
        if len(members) < need and not unmatched:
            errors.append(f"{ld.label}: RAID-{ld.raid_level} needs at least {need} disks, "
                          f"{len(members)} usable disk(s) found")
        chosen[ld.index] = members
    if errors:
        raise InvalidCommandParamsError("cannot place the software RAID volumes: "
                                        + "; ".join(errors))
    return chosen
