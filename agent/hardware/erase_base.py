"""What every erase method shares: its two outcomes and the node's options.

A method that does not apply to a disk (no NVMe, no ATA security feature
set) raises ``EraseUnsupported`` and the next method is tried.  A method that
applied but failed or refused (a frozen drive) raises ``EraseFailed``; the
next method is tried only if the operator allowed it.

Two options have a ramdisk-wide default that a node may override (IPA reads
both from ``driver_internal_info``; Ironic 39 copies neither there, so the
node's ``driver_info`` is read next, which is where IPA's documentation tells
operators to put ``wipe_special_filesystems``):

- ``agent_enable_discard_erase`` replaces ``ipa-enable-discard-erase``;
- ``wipe_special_filesystems`` replaces ``ipa-guard-special-filesystems``,
  inverted: true lets the erase proceed over shared-SAN filesystem signatures
  (GPFS, VMFS, GFS2), false keeps the guard on even where the ramdisk turned
  it off.  This is the meaning IPA documents; IPA's code reads the key the
  other way round (false skips its check), so a node that copied a value from
  IPA's code rather than its documentation is refused, never wiped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config import parse_bool
from agent.errors import CleaningError, InvalidCommandParamsError


class EraseOptionError(CleaningError, InvalidCommandParamsError):
    """A node's erase option has a value that cannot be used (400; still a CleaningError)."""

    code = 400
    message = "Invalid erase option"


class EraseUnsupported(Exception):
    """The method does not apply to this disk."""


class EraseFailed(Exception):
    """The method applies but did not (or must not) erase this disk."""


@dataclasses.dataclass(frozen=True)
class EraseOptions:
    iterations: int = 1
    zeroize: bool = True
    continue_if_failed: bool = False
    nvme: bool = True
    ata: bool = True
    concurrency: int = 4
    skip_read_only: bool = False
    discard: bool = False
    guard_shared: bool = True     # refuse disks carrying shared-SAN filesystem signatures

    @property
    def overwrite_allowed(self) -> bool:
        return self.iterations > 0 or self.zeroize


# driver_internal_info key → (field, parser); defaults are Ironic's [deploy] ones
_KEYS: dict[str, str] = {
    "agent_erase_devices_iterations": "iterations",
    "agent_erase_devices_zeroize": "zeroize",
    "agent_continue_if_ata_erase_failed": "continue_if_failed",   # older alias
    "agent_continue_if_secure_erase_failed": "continue_if_failed",
    "agent_enable_nvme_secure_erase": "nvme",
    "agent_enable_ata_secure_erase": "ata",
    "disk_erasure_concurrency": "concurrency",
    "agent_erase_skip_read_only": "skip_read_only",
}


def _int(value: Any, minimum: int) -> int:
    # int(2.7) would silently become 2 passes
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    number = int(value)
    if number < minimum:
        raise ValueError
    return number


# node key → field; the ramdisk setting is the default, the node's value wins
_OVERRIDES: dict[str, str] = {
    "agent_enable_discard_erase": "discard",
    "wipe_special_filesystems": "guard_shared",
}


def _override(node: Mapping[str, Any], key: str) -> tuple[str, Any] | None:
    """(where, raw value) of a node override, driver_internal_info first."""
    for where in ("driver_internal_info", "driver_info"):
        section = node.get(where)
        if isinstance(section, Mapping) and section.get(key) is not None:
            return where, section[key]
    return None


def _bool(value: Any) -> bool:
    # a number or a list is not a yes/no answer, even where str() would parse
    if not isinstance(value, (bool, str)):
        raise TypeError
    return parse_bool(value)


def options_from_node(node: Mapping[str, Any] | None, *, discard: bool = False,
                      guard_shared: bool = True) -> EraseOptions:
    """Parse the erase options; a bad value fails before any disk is touched.

    ``discard`` and ``guard_shared`` are the ramdisk's settings
    (``ipa-enable-discard-erase``, ``ipa-guard-special-filesystems``); the
    node may override each (see the module docstring).
    """
    node = node if isinstance(node, Mapping) else {}
    info = node.get("driver_internal_info")
    info = info if isinstance(info, Mapping) else {}
    values: dict[str, Any] = {"discard": discard, "guard_shared": guard_shared}
    for key, field in _OVERRIDES.items():
        found = _override(node, key)
        if found is None:
            continue
        where, raw = found
        try:
            flag = _bool(raw)
        except (TypeError, ValueError):
            raise EraseOptionError(f"{where}.{key} is invalid ({type(raw).__name__}): "
                                   "expected a boolean (true/false)") from None
        # wipe_special_filesystems=true means "wipe them": the guard is off
        values[field] = not flag if field == "guard_shared" else flag
    for key, field in _KEYS.items():
        if key not in info or info[key] is None:
            continue
        raw = info[key]
        try:
            if field == "iterations":
                values[field] = _int(raw, 0)
            elif field == "concurrency":
                values[field] = _int(raw, 1)
            else:
                values[field] = parse_bool(raw)
        except (TypeError, ValueError):
            kind = ("an integer >= 1" if field == "concurrency" else
                    "an integer >= 0" if field == "iterations" else "a boolean")
            raise EraseOptionError(f"driver_internal_info.{key}={raw!r} is invalid: expected "
                                   f"{kind}") from None
    return EraseOptions(**values)
