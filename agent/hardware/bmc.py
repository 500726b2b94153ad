"""BMC addresses through ipmitool, only when an IPMI device node exists.

Without ``/dev/ipmi*`` there is no local BMC interface and ipmitool would
only time out, so the keys are null.  Channels 1–11 are tried in order, as
vendors put the LAN channel in different places; the first channel with a
non-zero IPv4 address wins, and its MAC is the ``bmc_mac``.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import re
from typing import Any

from agent import tools
from agent.disk import sysfs
from agent.errors import AgentError

LOG = logging.getLogger(__name__)
CHANNELS = range(1, 12)
TIMEOUT = 15.0
_DEVICES = ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")


def ipmi_present(root: str = "/") -> bool:
    return any(glob.glob(sysfs.path(root, pattern)) for pattern in _DEVICES)


def parse_lan_print(text: str) -> dict[str, str]:
    """``Key : value`` lines of ``ipmitool lan print`` (first occurrence wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line.startswith(" "):
            fields.setdefault(key.strip(), value.strip())
    return fields


def parse_lan6_addresses(text: str) -> list[str]:
    """Active addresses from ``ipmitool lan6 print N dynamic_addr|static_addr``."""
    found = []
    address = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        if key == "Address":
            address = value.strip()
        elif key == "Status" and address:
            if value.strip().lower() == "active":
                found.append(address)
            address = None
    return found


def _run(*args: Any) -> str | None:
    try:
        return tools.run("ipmitool", *args, timeout=TIMEOUT).stdout
    except AgentError as exc:
        LOG.debug("ipmitool %s: %s", " ".join(map(str, args)), exc)
        return None


def _v4(channel_fields: dict[str, str]) -> str | None:
    value = channel_fields.get("IP Address")
    try:
        return str(ipaddress.IPv4Address(value)) if value else None
    except ValueError:
        return None


def _v6() -> str:
    for channel in CHANNELS:
        for kind in ("dynamic_addr", "static_addr"):
            text = _run("lan6", "print", channel, kind)
            if not text:
                continue
            for entry in parse_lan6_addresses(text):
                address = entry.split("/")[0]
                try:
                    if not ipaddress.IPv6Address(address).is_unspecified:
                        return address
                except ValueError:
                    continue
    return "::/0"


def collect(root: str = "/", skip: bool = False) -> dict[str, Any]:
    """``bmc_address``, ``bmc_v6address`` and (when found) ``bmc_mac``."""
    if skip:
        LOG.info("BMC detection skipped by configuration")
        return {"bmc_address": None, "bmc_v6address": None}
    if not ipmi_present(root):
        LOG.info("no IPMI device node; BMC addresses are null")
        return {"bmc_address": None, "bmc_v6address": None}
    result: dict[str, Any] = {"bmc_address": "0.0.0.0"}
    for channel in CHANNELS:
        text = _run("lan", "print", channel)
        if not text:
            continue
        fields = parse_lan_print(text)
        address = _v4(fields)
        mac = (fields.get("MAC Address") or "").lower()
        if address and address != "0.0.0.0":
            result["bmc_address"] = address
            if re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac) and mac != "00:00:00:00:00:00":
                result["bmc_mac"] = mac
            break
    result["bmc_v6address"] = _v6()
    return result
