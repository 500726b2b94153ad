"""BMC addresses through ipmitool, only when an IPMI device node exists.

A ramdisk kernel does not load the IPMI drivers by itself on every server,
so in a ramdisk (``is_ramdisk``: never on a developer's machine) the first
probe runs ``modprobe ipmi_msghandler ipmi_devintf ipmi_si`` once per
process; a module that does not load (no BMC: ipmi_si says "No such
device") is logged, never fatal.  Without ``/dev/ipmi*`` there is no local
BMC interface and ipmitool would only time out, so the keys are null.
Channels 1–11 are tried in order, as vendors put the LAN channel in
different places; the first channel with a non-zero IPv4 address wins, and
its MAC is the ``bmc_mac``.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import re
import threading
import time
from typing import Any

from agent import tools
from agent.config import Config, is_ramdisk
from agent.disk import sysfs
from agent.errors import AgentError

LOG = logging.getLogger(__name__)
CHANNELS = range(1, 12)
TIMEOUT = 15.0
_DEVICES = ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")
# the message handler first, then the character device, then the KCS/SMIC/BT
# system interface driver that finds the BMC (ipmi_si pulls nothing else in)
MODULES = ("ipmi_msghandler", "ipmi_devintf", "ipmi_si")
MODPROBE_TIMEOUT = 60.0      # ipmi_si probes every interface type; slow BMCs take seconds
NODE_WAIT = 3.0              # udev creates /dev/ipmi0 shortly after ipmi_devintf binds
_modules_lock = threading.Lock()
_modules_tried = False


def ipmi_present(root: str = "/") -> bool:
    return any(glob.glob(sysfs.path(root, pattern)) for pattern in _DEVICES)


def load_modules(config: Config | None, root: str = "/") -> bool:
    """Load the IPMI drivers once per process, in a ramdisk only; True when tried now.

    ``config`` None means the live machine with default settings
    (``ramdisk=auto``: an initramfs root).
    """
    global _modules_tried
    if not is_ramdisk(config if config is not None else Config()):
        return False
    with _modules_lock:
        if _modules_tried:
            return False
        _modules_tried = True
        loaded = []
        for module in MODULES:
            try:
                tools.run("modprobe", module, timeout=MODPROBE_TIMEOUT)
                loaded.append(module)
            except AgentError as exc:
                # expected on machines without a BMC; the probe below says "null"
                LOG.info("modprobe %s did not load: %s", module, exc)
        LOG.info("IPMI drivers loaded: %s", ", ".join(loaded) or "none")
        if MODULES[-1] in loaded:
            # only ipmi_si finding a BMC makes a device node worth waiting for
            _wait_for_node(root)
        return True


def _wait_for_node(root: str) -> None:
    deadline = time.monotonic() + NODE_WAIT
    while not ipmi_present(root) and time.monotonic() < deadline:
        time.sleep(0.1)


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


def lan_channel(root: str = "/") -> tuple[int, dict[str, str]] | None:
    """The first channel whose ``lan print`` answers, with its fields (None: no BMC)."""
    if not ipmi_present(root):
        return None
    for channel in CHANNELS:
        text = _run("lan", "print", channel)
        if text:
            return channel, parse_lan_print(text)
    return None


def collect(root: str = "/", skip: bool = False,
            config: Config | None = None) -> dict[str, Any]:
    """``bmc_address``, ``bmc_v6address`` and (when found) ``bmc_mac``.

    The IPMI drivers are loaded first when ``config`` says this is a ramdisk,
    or, without ``config``, when reading the live ``/`` of an initramfs.
    """
    if skip:
        LOG.info("BMC detection skipped by configuration")
        return {"bmc_address": None, "bmc_v6address": None}
    if config is not None or os.path.realpath(root) == "/":
        load_modules(config, root)
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
