"""ATA Security Erase through hdparm.

The drive's security state comes from ``hdparm -I``.  A frozen drive refuses
security commands until a power cycle, so it is refused up front instead of
half-configured.  A password left by an interrupted earlier attempt is
unlocked with the same well-known password this module sets.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from agent import tools
from agent.errors import AgentError
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported

LOG = logging.getLogger(__name__)

PASSWORD = "NULL"
DEFAULT_TIMEOUT = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class SecurityState:
    supported: bool
    enabled: bool
    locked: bool
    frozen: bool
    enhanced: bool
    erase_minutes: int | None


def parse_security(text: str) -> SecurityState | None:
    """The "Security:" section of ``hdparm -I``; None when the drive has none."""
    match = re.search(r"^Security:\s*$(.*?)(?=^\S|\Z)", text, re.M | re.S)
    if not match:
        return None
    flags: dict[str, bool] = {}
    for line in match.group(1).splitlines():
        words = line.split()
        if not words:
            continue
        negated = words[0] == "not"
        key = " ".join(words[1:] if negated else words)
        if key in ("supported", "enabled", "locked", "frozen"):
            flags[key] = not negated
    minutes = re.findall(r"(\d+)min for (?:ENHANCED )?SECURITY ERASE UNIT", match.group(1))
    return SecurityState(
        supported=flags.get("supported", False), enabled=flags.get("enabled", False),
        locked=flags.get("locked", False), frozen=flags.get("frozen", False),
        enhanced="supported: enhanced erase" in match.group(1),
        erase_minutes=max(int(m) for m in minutes) if minutes else None)


def _state(device: str) -> SecurityState | None:
    try:
        out = tools.run("hdparm", "-I", device, timeout=60).stdout
    except AgentError as exc:
        raise EraseUnsupported(f"hdparm -I failed: {exc.details}") from None
    return parse_security(out)


def _hdparm(*args: str, timeout: float = 120.0) -> None:
    try:
        tools.run("hdparm", "--user-master", "u", *args, timeout=timeout)
    except AgentError as exc:
        raise EraseFailed(f"hdparm {' '.join(args[:-1])} failed: {exc.details}") from None


def erase(disk: Disk) -> str:
    if disk.kind != "disk" or disk.tran == "nvme":
        raise EraseUnsupported("not an ATA drive")
    state = _state(disk.name)
    if state is None or not state.supported:
        raise EraseUnsupported("the drive does not support the ATA security feature set")
    if state.frozen:
        raise EraseFailed("the drive's security is frozen (the firmware or BIOS froze it; "
                          "a power cycle or hot-plug may unfreeze it); secure erase refused")
    if state.locked or state.enabled:
        # a previous attempt set our password and stopped before the erase finished
        LOG.warning("%s has ATA security enabled; unlocking with the agent's password",
                    disk.name)
        if state.locked:
            _hdparm("--security-unlock", PASSWORD, disk.name)
    else:
        _hdparm("--security-set-pass", PASSWORD, disk.name)
    option = "--security-erase-enhanced" if state.enhanced else "--security-erase"
    timeout = state.erase_minutes * 120.0 + 600 if state.erase_minutes else DEFAULT_TIMEOUT
    LOG.info("ATA %s on %s (estimated %s min)", option[2:], disk.name, state.erase_minutes)
    _hdparm(option, PASSWORD, disk.name, timeout=timeout)
    after = _state(disk.name)
    if after is not None and after.enabled:
        raise EraseFailed("security is still enabled after the erase; the drive may not "
                          "have been erased")
    return "ATA secure erase" + (" (enhanced)" if state.enhanced else "")
