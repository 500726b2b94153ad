"""What every erase method shares: its two outcomes and the node's options.

A method that does not apply to a disk (no NVMe, no ATA security feature
set) raises ``EraseUnsupported`` and the next method is tried.  A method that
applied but failed or refused (a frozen drive) raises ``EraseFailed``; the
next method is tried only if the operator allowed it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config import parse_bool
from agent.errors import CleaningError


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


def options_from_node(node: Mapping[str, Any] | None, *, discard: bool = False) -> EraseOptions:
    """Parse the erase options; a bad value fails before any disk is touched."""
    info = (node or {}).get("driver_internal_info") or {}
    values: dict[str, Any] = {"discard": discard}
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
            raise CleaningError(f"driver_internal_info.{key}={raw!r} is invalid: expected "
                                f"{kind}") from None
    return EraseOptions(**values)
