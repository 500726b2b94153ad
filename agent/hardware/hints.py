"""Root-device hints: parse, validate, match, choose (reference §9.2).

A hint value may start with an operator.  Strings compare lower-cased and
URL-quoted on both sides, so ``"Samsung SSD"`` matches ``samsung ssd``;
``size`` is in GiB; ``serial`` and the WWN keys match any identifier the disk
is known by.  Hints are validated as a whole before any disk is looked at, and
every problem is a ``DeviceNotFound`` naming the hint.

Software RAID: md arrays are disks here.  ``volume_name`` matches an array's
volume name, ``name`` matches /dev/md127 and /dev/md/NAME alike, and a disk
holding members of an array is never chosen (writing it would break the
array).  A node with no hints whose ``target_raid_config`` asks for software
RAID deploys onto its root volume (``is_root_volume``, else the first).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from agent.disk import vmedia
from agent.errors import DeviceNotFound
from agent.hardware.disks import GIB, Disk

MIN_DEFAULT_SIZE = 4 * GIB
STRING_HINTS = ("model", "vendor", "serial", "wwn", "wwn_with_extension",
                "wwn_vendor_extension", "name", "hctl", "by_path", "tran", "volume_name")
VALID_HINTS = (*STRING_HINTS, "size", "rotational")
# keys skip_block_devices accepts beyond the hints (none since volume_name is a hint)
SKIP_ONLY_KEYS: tuple[str, ...] = ()
SOFTWARE_RAID = "software"

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt,
    "<=": operator.le, "<": operator.lt,
    "=": operator.ge,  # legacy spelling: "= 100" has always meant ">= 100"
}
_STRING: dict[str, Callable[[str, str], bool]] = {
    "s==": operator.eq, "s!=": operator.ne, "s<": operator.lt, "s<=": operator.le,
    "s>": operator.gt, "s>=": operator.ge,
}
_SPECIAL = ("<in>", "<or>", "<all-in>", "<range-in>")
# longest first, so "<=" is never read as "<" followed by "=..."
_OPERATORS = sorted([*_NUMERIC, *_STRING, *_SPECIAL], key=len, reverse=True)
_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}
_RANGE = re.compile(r"^([\[(])\s*(\S+)\s+(\S+)\s*([\])])$")


@dataclasses.dataclass(frozen=True)
class Hint:
    key: str
    op: str                       # "==" / "s==" when the value had no operator
    values: tuple[Any, ...]       # normalised operands
    raw: Any                      # what the operator wrote, for messages
    closed: tuple[bool, bool] = (True, True)   # <range-in> bracket kinds

    def describe(self) -> str:
        return f"{self.key} {json.dumps(self.raw) if isinstance(self.raw, str) else self.raw}"


def _normalise_string(value: Any) -> str:
    return quote(str(value).strip().lower())


def _split_operator(text: str) -> tuple[str | None, str]:
    for op in _OPERATORS:
        if text.startswith(op):
            return op, text[len(op):].strip()
    return None, text


def _size_number(key: str, text: str, raw: Any) -> int:
    try:
        number = int(text)
    except ValueError:
        raise DeviceNotFound(f"root device hint {key}={raw!r}: {text!r} is not a whole number "
                             "of GiB") from None
    if number <= 0:
        raise DeviceNotFound(f"root device hint {key}={raw!r}: the size must be greater than 0")
    return number


def _parse_size(raw: Any) -> Hint:
    if isinstance(raw, bool):
        raise DeviceNotFound(f"root device hint size={raw!r}: expected GiB as an integer")
    if isinstance(raw, int):
        return Hint("size", "==", (_size_number("size", str(raw), raw),), raw)
    op, rest = _split_operator(str(raw).strip())
    if op is None:
        return Hint("size", "==", (_size_number("size", rest, raw),), raw)
    if op in _STRING or op in ("<in>", "<all-in>"):
        raise DeviceNotFound(f"root device hint size={raw!r}: operator {op} compares strings; "
                             "use ==, !=, >=, >, <=, <, <or> or <range-in> for sizes")
    if op == "<or>":
        values = tuple(_size_number("size", v.strip(), raw) for v in rest.split("<or>")
                       if v.strip())
        if not values:
            raise DeviceNotFound(f"root device hint size={raw!r}: <or> needs values")
        return Hint("size", op, values, raw)
    if op == "<range-in>":
        match = _RANGE.match(rest)
        if not match:
            raise DeviceNotFound(f"root device hint size={raw!r}: expected "
                                 "'<range-in> [ low high ]' with [ ] inclusive, ( ) exclusive")
        low = _size_number("size", match.group(2), raw)
        high = _size_number("size", match.group(3), raw)
        return Hint("size", op, (low, high), raw,
                    closed=(match.group(1) == "[", match.group(4) == "]"))
    return Hint("size", op, (_size_number("size", rest, raw),), raw)


def _parse_string(key: str, raw: Any) -> Hint:
    if isinstance(raw, (dict, list, bool)) or raw is None:
        raise DeviceNotFound(f"root device hint {key}={raw!r}: expected a string")
    text = str(raw).strip()
    if not text:
        raise DeviceNotFound(f"root device hint {key!r} is empty")
    op, rest = _split_operator(text.lower())
    if op is None:
        return Hint(key, "s==", (_normalise_string(text),), raw)
    if op in _NUMERIC or op == "<range-in>":
        raise DeviceNotFound(f"root device hint {key}={raw!r}: operator {op} compares numbers; "
                             "use s==, s!=, s<, s<=, s>, s>=, <in>, <all-in> or <or>")
    if op == "<or>":
        values = tuple(_normalise_string(v) for v in rest.split("<or>") if v.strip())
    elif op == "<all-in>":
        values = tuple(_normalise_string(v) for v in rest.split())
    else:
        values = (_normalise_string(rest),) if rest else ()
    if not values:
        raise DeviceNotFound(f"root device hint {key}={raw!r}: operator {op} needs a value")
    return Hint(key, op, values, raw)


def _parse_rotational(raw: Any) -> Hint:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return Hint("rotational", "==", (True,), raw)
    if text in _FALSE:
        return Hint("rotational", "==", (False,), raw)
    raise DeviceNotFound(f"root device hint rotational={raw!r}: expected a boolean "
                         "(true/false, yes/no, 1/0)")


def parse_hints(hints: Any, *, allow: Iterable[str] = ()) -> list[Hint]:
    """Validate a hints dict; raise DeviceNotFound naming every problem found first."""
    if hints is None:
        return []
    if not isinstance(hints, Mapping):
        raise DeviceNotFound(f"root device hints must be an object, got {type(hints).__name__}")
    allowed = set(VALID_HINTS) | set(allow)
    unknown = sorted(set(hints) - allowed)
    if unknown:
        raise DeviceNotFound(f"unknown root device hint(s) {', '.join(unknown)}; valid hints: "
                             f"{', '.join(VALID_HINTS)}")
    parsed = []
    for key, raw in hints.items():
        if key == "size":
            parsed.append(_parse_size(raw))
        elif key == "rotational":
            parsed.append(_parse_rotational(raw))
        elif key in STRING_HINTS:
            parsed.append(_parse_string(key, raw))
        # keys only allowed by the caller carry nothing to match here
    return parsed


def _match_number(hint: Hint, value: float) -> bool:
    if hint.op in _NUMERIC:
        return _NUMERIC[hint.op](value, float(hint.values[0]))
    if hint.op == "<or>":
        return any(value == float(v) for v in hint.values)
    low, high = (float(v) for v in hint.values)
    above = value >= low if hint.closed[0] else value > low
    below = value <= high if hint.closed[1] else value < high
    return above and below


def _match_string(hint: Hint, value: str) -> bool:
    if hint.op in _STRING:
        return _STRING[hint.op](value, hint.values[0])
    if hint.op == "<in>":
        return hint.values[0] in value
    if hint.op == "<all-in>":
        return all(v in value for v in hint.values)
    return any(value == v for v in hint.values)  # <or>


def hint_matches(hint: Hint, disk: Disk) -> bool:
    if hint.key == "size":
        return _match_number(hint, disk.size / GIB)
    if hint.key == "rotational":
        return bool(disk.rotational) == hint.values[0]
    for value in disk.hint_values(hint.key):
        # a disk that lacks the attribute never matches, not even with s!=
        if value is not None and str(value).strip() and \
                _match_string(hint, _normalise_string(value)):
            return True
    return False


def matches(disk: Disk, parsed: Sequence[Hint]) -> bool:
    return all(hint_matches(h, disk) for h in parsed)


def _summary(disks: Sequence[Disk]) -> str:
    if not disks:
        return "no disks were found"
    return "disks seen: " + "; ".join(
        f"{d.name} ({d.size_gib:.1f} GiB, model={d.model}, serial={d.serial}, "
        f"wwn={d.wwn}, tran={d.tran}, rotational={d.rotational})" for d in disks)


def _arrays_summary(disks: Sequence[Disk]) -> str:
    arrays = [d for d in disks if d.kind == "md"]
    if not arrays:
        return "no md arrays were found"
    return "md arrays seen: " + "; ".join(
        f"{d.name} (volume_name={d.volume_name}, {d.size_gib:.1f} GiB, members on "
        f"{', '.join(d.member_disks) or 'no disks'})" for d in arrays)


def _array_holders(disks: Sequence[Disk]) -> dict[str, str]:
    """Disk name -> the array holding part of it, for every listed md array."""
    held: dict[str, str] = {}
    for disk in disks:
        for member in disk.member_disks:
            held.setdefault(member, disk.name)
    return held


def skipped_by(disk: Disk, skip_parsed: Sequence[Sequence[Hint]]) -> bool:
    """True when any skip_block_devices entry (with hints to match) names ``disk``."""
    return any(entry and matches(disk, entry) for entry in skip_parsed)


def parse_skip_list(skip: Any) -> list[list[Hint]]:
    if skip is None:
        return []
    if not isinstance(skip, list) or not all(isinstance(e, Mapping) for e in skip):
        raise DeviceNotFound("properties.skip_block_devices must be a list of hint objects, "
                             f"got {skip!r}")
    return [parse_hints(entry, allow=SKIP_ONLY_KEYS) for entry in skip]


def select_root_device(disks: Sequence[Disk], hints: Mapping[str, Any] | None,
                       skip_hints: Any = None) -> tuple[Disk, str]:
    """Pick the install disk: first hint match in listing order, else the smallest ≥ 4 GiB."""
    parsed = parse_hints(hints)
    skip_parsed = parse_skip_list(skip_hints)
    candidates = [d for d in disks if not skipped_by(d, skip_parsed)]
    skipped = [d.name for d in disks if d not in candidates]
    skip_note = f"; skipped by skip_block_devices: {', '.join(skipped)}" if skipped else ""
    # the array is the device to write; its member disks are not free to take
    held = _array_holders(disks)
    if held:
        members = [d for d in candidates if d.name in held]
        candidates = [d for d in candidates if d.name not in held]
        if members:
            skip_note += "; skipped as md array members: " + ", ".join(
                f"{d.name} ({held[d.name]})" for d in members)
    # Ironic's virtual media, whatever the hints say: writing there loses the boot config
    media = [d for d in candidates
             if vmedia.classify(d.name, read_only=d.read_only, kname=d.kname)]
    candidates = [d for d in candidates if d not in media]
    if media:
        skip_note += f"; skipped as virtual media: {', '.join(d.name for d in media)}"
    if parsed:
        for disk in candidates:
            if matches(disk, parsed):
                reason = (f"{disk.name} matched root device hints "
                          f"{', '.join(h.describe() for h in parsed)} "
                          f"(first match of {len(candidates)} candidate disk(s)){skip_note}")
                return disk, reason
        arrays_note = (f"; {_arrays_summary(disks)}"
                       if any(h.key == "volume_name" for h in parsed) else "")
        raise DeviceNotFound("No suitable device was found for deployment using these hints "
                             f"{json.dumps(dict(hints or {}), sort_keys=True)}{skip_note}"
                             f"{arrays_note}; {_summary(candidates)}")
    for disk in sorted(candidates, key=lambda d: (d.size, d.name)):
        if disk.size >= MIN_DEFAULT_SIZE:
            reason = (f"{disk.name} is the smallest disk of at least 4 GiB "
                      f"({disk.size_gib:.1f} GiB); no root device hints were given{skip_note}")
            return disk, reason
    raise DeviceNotFound("No suitable device was found for deployment: no root device hints "
                         f"were given and no disk is at least 4 GiB{skip_note}; "
                         f"{_summary(candidates)}")


def raid_root_volume(node: Mapping[str, Any] | None) -> str | None:
    """Volume name of the software-RAID root volume the node's RAID config asks for.

    ``target_raid_config`` (steps get it) or ``driver_internal_info.target_raid_config``
    (Ironic copies it there for the agent RAID interface); the volume marked
    ``is_root_volume``, else the first software logical disk.  A volume without a
    name is called ``md<position>``, as the RAID step names it.
    """
    node = node or {}
    for config in (node.get("target_raid_config"),
                   (node.get("driver_internal_info") or {}).get("target_raid_config")):
        logical = config.get("logical_disks") if isinstance(config, Mapping) else None
        if not isinstance(logical, list):
            continue
        software = [(i, ld) for i, ld in enumerate(logical)
                    if isinstance(ld, Mapping) and ld.get("controller") == SOFTWARE_RAID]
        if not software:
            continue
        index, root = next(((i, ld) for i, ld in software if ld.get("is_root_volume") is True),
                           software[0])
        name = root.get("volume_name")
        return name if isinstance(name, str) and name else f"md{index}"
    return None


def hints_from_node(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """instance_info.root_device, else properties.root_device (reference §9.2).

    Without either, a node whose RAID config asks for software RAID deploys onto
    the root volume: ``{"volume_name": <its name>}``.
    """
    node = node or {}
    for section in ("instance_info", "properties"):
        value = (node.get(section) or {}).get("root_device")
        if value:
            return value
    volume = raid_root_volume(node)
    return {"volume_name": volume} if volume else None


def skip_list_from_node(node: Mapping[str, Any] | None) -> Any:
    return ((node or {}).get("properties") or {}).get("skip_block_devices")
