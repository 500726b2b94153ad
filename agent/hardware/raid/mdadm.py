"""mdadm argument lists, and parsers for what mdadm and the kernel report about arrays.

The builders return the arguments after the tool name, for
``tools.run(TOOL, *args, env=ENV)``.  ``ENV`` pins the C locale: the parsers
read mdadm 4.2's English labels.  Sizes come out in bytes whatever unit the
text used (``--detail`` and ``Array Size`` count KiB, ``--examine`` offsets
count 512-byte sectors, /proc/mdstat counts 1 KiB blocks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

TOOL = "mdadm"
ENV = {"LC_ALL": "C", "LANG": "C"}
NO_SUPERBLOCK = "No md superblock detected"
# schema spelling of mdadm's level names
SCHEMA_LEVEL = {"raid0": "0", "raid1": "1", "raid10": "1+0", "raid5": "5", "raid6": "6"}
_LEVELS = {"0", "1", "10", "5", "6"}
_KIB = 1024
_SECTOR = 512


# --- command lines ----------------------------------------------------------------------

def create(md_device: str, level: str, members: Sequence[str], *, name: str,
           metadata: str = "1.2", data_offset_kib: int | None = 1024,
           homehost: str | None = "any") -> list[str]:
    """``mdadm --create``, non-interactive.

    ``--run`` skips the "continue creating array?" question and ``--force``
    lets a two-member RAID-5 or one-member RAID-0 through, as IPA does.  The
    data offset is pinned (1.1/1.2 only) so the holder partition sizes the
    planner computed are exactly what mdadm uses.  Metadata 1.0 keeps the
    superblock at the end of each member, which firmware needs for an ESP
    mirror: each member then reads as a plain FAT filesystem.
    ``--homehost=any`` records the name as ``any:NAME`` so the installed OS
    assembles it under its own name (a ramdisk hostname would make it
    "foreign" there and rename it md127).
    """
    if level not in _LEVELS:
        raise ValueError(f"mdadm level {level!r} is not one this agent creates")
    if metadata not in ("1.0", "1.1", "1.2"):
        raise ValueError(f"metadata {metadata!r}: expected 1.0, 1.1 or 1.2")
    if not members:
        raise ValueError("an array needs members")
    args = ["--create", md_device, "--run", "--force", f"--metadata={metadata}",
            f"--level={level}", f"--raid-devices={len(members)}", f"--name={name}"]
    if homehost:
        args.append(f"--homehost={homehost}")
    if data_offset_kib is not None and metadata != "1.0":
        args.append(f"--data-offset={data_offset_kib}K")
    return [*args, *members]


def assemble_scan() -> list[str]:
    return ["--assemble", "--scan"]


def stop(md_device: str) -> list[str]:
    return ["--stop", md_device]


def zero_superblock(device: str) -> list[str]:
    return ["--zero-superblock", device]


def detail(md_device: str) -> list[str]:
    return ["--detail", md_device]


def examine(device: str) -> list[str]:
    return ["--examine", device]


def no_superblock(stderr: str) -> bool:
    """True when ``mdadm --examine`` failed only because the device is no member."""
    return NO_SUPERBLOCK in stderr


# --- shared helpers -----------------------------------------------------------------------

_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 '/.()-]*?)\s:\s?(.*)$")
_LEADING_INT = re.compile(r"^\s*(\d+)")


def _fields(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        match = _FIELD.match(line)
        if match:
            out[match.group(1).strip()] = match.group(2).strip()
    return out


def _int(text: str | None) -> int | None:
    match = _LEADING_INT.match(text or "")
    return int(match.group(1)) if match else None


def _times(text: str | None, unit: int) -> int | None:
    value = _int(text)
    return None if value is None else value * unit


def _volume_name(name: str | None) -> str | None:
    """``any:root  (local to host x)`` -> ``root``; a name without a host stays as is."""
    if not name:
        return None
    first = name.split()[0]
    return first.split(":", 1)[1] if ":" in first else first


def _level(text: str | None) -> tuple[str | None, str | None]:
    level = (text or "").strip() or None
    return level, SCHEMA_LEVEL.get(level or "")


# --- mdadm --detail -----------------------------------------------------------------------

_MEMBER = re.compile(r"^\s*(\d+|-)\s+(\d+)\s+(\d+)\s+(\d+|-)\s+(.*?)\s*$")


def _member(line: str) -> dict[str, Any] | None:
    match = _MEMBER.match(line)
    if not match:
        return None
    words = match.group(5).split()
    device = words.pop() if words and words[-1].startswith("/") else None
    return {"number": None if match.group(1) == "-" else int(match.group(1)),
            "major": int(match.group(2)), "minor": int(match.group(3)),
            "role": None if match.group(4) == "-" else int(match.group(4)),
            "state": words, "device": device}


def parse_detail(text: str) -> dict[str, Any]:
    """``mdadm --detail /dev/mdX`` as a dict; ``members`` in the table's order."""
    lines = text.splitlines()
    device = lines[0].rstrip(":").strip() if lines and lines[0].rstrip().endswith(":") else None
    table_at = next((i for i, line in enumerate(lines)
                     if line.split()[:2] == ["Number", "Major"]), len(lines))
    f = _fields(lines[1:table_at])
    members = [m for line in lines[table_at + 1:] if (m := _member(line))]
    level, schema = _level(f.get("Raid Level"))
    state = [s.strip() for s in f.get("State", "").split(",") if s.strip()]
    return {
        "device": device,
        "version": f.get("Version"),
        "level": level, "raid_level": schema,
        "array_size": _times(f.get("Array Size"), _KIB),
        "used_dev_size": _times(f.get("Used Dev Size"), _KIB),
        "raid_devices": _int(f.get("Raid Devices")),
        "total_devices": _int(f.get("Total Devices")),
        "state": state,
        "degraded": "degraded" in state,
        "active_devices": _int(f.get("Active Devices")),
        "working_devices": _int(f.get("Working Devices")),
        "failed_devices": _int(f.get("Failed Devices")),
        "spare_devices": _int(f.get("Spare Devices")),
        "layout": f.get("Layout"),
        "chunk_size": f.get("Chunk Size"),
        "consistency_policy": f.get("Consistency Policy"),
        "sync_status": next((f[k] for k in ("Resync Status", "Rebuild Status", "Reshape Status",
                                            "Check Status") if k in f), None),
        "name": f.get("Name", "").split()[0] if f.get("Name") else None,
        "volume_name": _volume_name(f.get("Name")),
        "uuid": f.get("UUID"),
        "events": _int(f.get("Events")),
        "members": members,
        # the partitions or disks that hold the array's data right now
        "component_devices": [m["device"] for m in members
                              if m["device"] and "faulty" not in m["state"]],
    }


# --- mdadm --examine ------------------------------------------------------------------------

def _role(text: str | None) -> tuple[int | None, str | None]:
    if not text:
        return None, None
    match = re.match(r"^Active device (\d+)$", text)
    return (int(match.group(1)), "active") if match else (None, text.strip().lower())


def _examine_block(device: str, lines: Sequence[str]) -> dict[str, Any]:
    f = _fields(lines)
    level, schema = _level(f.get("Raid Level"))
    checksum = f.get("Checksum", "")
    role, role_kind = _role(f.get("Device Role"))
    array_state = (f.get("Array State") or "").split(" ")[0] or None
    return {
        "device": device,
        "magic": f.get("Magic"),
        "version": f.get("Version"),
        "feature_map": f.get("Feature Map"),
        "uuid": f.get("Array UUID") or f.get("UUID"),
        "name": f.get("Name", "").split()[0] if f.get("Name") else None,
        "volume_name": _volume_name(f.get("Name")),
        "level": level, "raid_level": schema,
        "raid_devices": _int(f.get("Raid Devices")),
        "avail_dev_size": _times(f.get("Avail Dev Size"), _SECTOR),
        "array_size": _times(f.get("Array Size"), _KIB),
        "used_dev_size": _times(f.get("Used Dev Size"), _SECTOR),
        "data_offset": _times(f.get("Data Offset"), _SECTOR),
        "super_offset": _times(f.get("Super Offset"), _SECTOR),
        "state": f.get("State"),
        "device_uuid": f.get("Device UUID"),
        "events": _int(f.get("Events")),
        "checksum_ok": checksum.endswith("- correct") if checksum else None,
        "layout": f.get("Layout"),
        "chunk_size": f.get("Chunk Size"),
        "role": role, "role_kind": role_kind,
        "array_state": array_state,
    }


def parse_examine(text: str) -> list[dict[str, Any]]:
    """``mdadm --examine DEV...``: one dict per device block, in order."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            blocks.append((line.rstrip()[:-1], []))
        elif blocks:
            blocks[-1][1].append(line)
    return [_examine_block(device, lines) for device, lines in blocks]


# --- /proc/mdstat ------------------------------------------------------------------------------

_ARRAY_LINE = re.compile(r"^(md\w*)\s*:\s*(\S+)\s*(.*)$")
_DEV = re.compile(r"^([\w.-]+)\[(\d+)\]((?:\([A-Z]\))*)$")
_STATUS = re.compile(r"\[(\d+)/(\d+)\]\s+\[([U_]+)\]")
_SYNC = re.compile(r"(resync|recovery|reshape|check|repair)\s*=\s*([\d.]+)%")
_FLAGS = {"F": "faulty", "S": "spare", "W": "write-mostly", "R": "replacement",
          "J": "journal"}


def _mdstat_array(name: str, state: str, rest: str, body: Sequence[str]) -> dict[str, Any]:
    words = rest.split()
    read_only = None
    if words and words[0].startswith("("):
        read_only = words.pop(0).strip("()")
    level = words.pop(0) if words and not _DEV.match(words[0]) else None
    members = []
    for word in words:
        match = _DEV.match(word)
        if match:
            flags = [_FLAGS.get(c, c) for c in re.findall(r"\(([A-Z])\)", match.group(3))]
            members.append({"device": match.group(1), "slot": int(match.group(2)),
                            "flags": flags})
    text = " ".join(line.strip() for line in body)
    blocks = _int(body[0]) if body else None
    metadata = re.search(r"super (\S+)", text)
    status = _STATUS.search(text)
    sync = _SYNC.search(text)
    return {
        "name": name, "state": state, "read_only": read_only, "level": level,
        "raid_level": SCHEMA_LEVEL.get(level or ""),
        "members": sorted(members, key=lambda m: m["slot"]),
        "size": blocks * _KIB if blocks is not None else None,
        "metadata": metadata.group(1) if metadata else None,
        "raid_disks": int(status.group(1)) if status else None,
        "working_disks": int(status.group(2)) if status else None,
        "status": status.group(3) if status else None,
        "degraded": bool(status and "_" in status.group(3)),
        "sync": ({"action": sync.group(1), "percent": float(sync.group(2))}
                 if sync else None),
    }


def parse_mdstat(text: str) -> dict[str, Any]:
    """/proc/mdstat: personalities, arrays by name, and the unused devices."""
    personalities: list[str] = []
    unused: list[str] = []
    arrays: dict[str, dict[str, Any]] = {}
    current: tuple[str, str, str, list[str]] | None = None

    def flush() -> None:
        if current:
            arrays[current[0]] = _mdstat_array(*current)

    for line in text.splitlines():
        if line.startswith("Personalities"):
            personalities = re.findall(r"\[(\w+)\]", line)
        elif line.startswith("unused devices"):
            flush()
            current = None
            value = line.split(":", 1)[1].strip()
            unused = [] if value == "<none>" else value.split()
        elif (match := _ARRAY_LINE.match(line)):
            flush()
            current = (match.group(1), match.group(2), match.group(3), [])
        elif current and line.strip():
            current[3].append(line)
    flush()
    return {"personalities": personalities, "arrays": arrays, "unused": unused}
