"""NVMe Format with Secure Erase: cryptographic when supported, else user data.

``nvme id-ctrl`` tells what the controller can do: OACS bit 1 is Format
NVM, FNA bit 2 is cryptographic erase.  FNA bit 0 means a format erases
every namespace on the controller, so it is only used when all of them are
being erased in this run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import Any

from agent import tools
from agent.errors import AgentError
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported

LOG = logging.getLogger(__name__)

OACS_FORMAT = 0x2
FNA_ALL_NAMESPACES = 0x1
FNA_CRYPTO = 0x4
FORMAT_TIMEOUT = 6 * 3600.0
SES_USER_DATA = 1
SES_CRYPTO = 2


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise EraseUnsupported(f"{what} printed no JSON: {exc}") from None


def siblings(listing: dict[str, Any], device: str) -> set[str]:
    """Namespaces behind the same controller (same serial) as ``device``."""
    devices = listing.get("Devices") or []
    serial = next((d.get("SerialNumber") for d in devices if d.get("DevicePath") == device),
                  None)
    if serial is None:
        return {device}
    return {d["DevicePath"] for d in devices if d.get("SerialNumber") == serial
            and d.get("DevicePath")}


def erase(disk: Disk, erasing: Collection[str]) -> str:
    """Format ``disk``; ``erasing`` is every disk name erased in this run."""
    if disk.tran != "nvme":
        raise EraseUnsupported("not an NVMe namespace")
    try:
        ctrl = _json(tools.run("nvme", "id-ctrl", disk.name, "-o", "json", timeout=60).stdout,
                     "nvme id-ctrl")
    except AgentError as exc:
        raise EraseUnsupported(f"nvme id-ctrl failed: {exc.details}") from None
    oacs = int(ctrl.get("oacs", 0))
    fna = int(ctrl.get("fna", 0))
    if not oacs & OACS_FORMAT:
        raise EraseUnsupported("the controller does not support Format NVM")
    if fna & FNA_ALL_NAMESPACES:
        try:
            listing = _json(tools.run("nvme", "list", "-o", "json", timeout=60).stdout,
                            "nvme list")
        except AgentError as exc:
            raise EraseUnsupported(f"nvme list failed: {exc.details}") from None
        spared = sorted(siblings(listing, disk.name) - set(erasing))
        if spared:
            raise EraseUnsupported("a format would also erase namespace(s) "
                                   f"{', '.join(spared)}, which are not being erased")
    ses = SES_CRYPTO if fna & FNA_CRYPTO else SES_USER_DATA
    kind = "cryptographic erase" if ses == SES_CRYPTO else "user data erase"
    LOG.info("formatting %s with secure erase setting %d (%s)", disk.name, ses, kind)
    try:
        tools.run("nvme", "format", disk.name, f"--ses={ses}", "--force",
                  timeout=FORMAT_TIMEOUT)
    except AgentError as exc:
        raise EraseFailed(f"nvme format --ses={ses} failed: {exc.details}") from None
    return f"nvme format ({kind})"
