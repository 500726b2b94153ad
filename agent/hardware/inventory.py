"""The full hardware inventory in the reference's schema (§9.1).

Each part is read by its own module.  A part that fails is reported as null
and its reason logged: an unreadable DMI table must not stop a node from
being inspected or deployed.

``raid_arrays`` is this agent's addition (Ironic keeps unknown keys as they
are): every md array with its members and the whole disks they lie on, so an
operator can see which listed disks an array holds.  The arrays themselves
are in ``disks`` too, as deploy targets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.hardware import bmc, boot, cpu, disks, dmi, interfaces, memory
from agent.hardware.raid import arrays as md_arrays

LOG = logging.getLogger(__name__)


def _part(name: str, reader: Callable[[], Any]) -> Any:
    try:
        return reader()
    except Exception as exc:  # noqa: BLE001 - one bad part never fails the inventory
        LOG.warning("inventory part %r could not be read and is null: %s: %s",
                    name, type(exc).__name__, exc)
        return None


def raid_arrays(root: str = "/") -> list[dict[str, Any]]:
    """The inventory's ``raid_arrays``: one object per md array, running or not."""
    return [{"name": a.device, "volume_name": a.volume_name, "raid_level": a.level,
             "members": list(a.members), "member_disks": list(a.member_disks),
             "state": a.state, "size": a.size, "metadata": a.metadata}
            for a in md_arrays.list_arrays(root)]


def collect(config: Any, *, root: str = "/",
            disk_lister: Callable[[], list[disks.Disk]] | None = None,
            arch: str | None = None, live: bool = True,
            lldp_cache: Any = None) -> dict[str, Any]:
    """Build the inventory; ``root``/``live`` let tests read a fixture tree."""
    include_loop = bool(getattr(config, "include_loop_devices", False))
    lister = disk_lister or (lambda: disks.list_disks(root, include_loop=include_loop))
    lldp_timeout = (float(getattr(config, "lldp_timeout", 30.0))
                    if getattr(config, "collect_lldp", False) else None)
    result: dict[str, Any] = {
        "interfaces": _part("interfaces", lambda: interfaces.collect(
            root, live=live, lldp_timeout=lldp_timeout, lldp_cache=lldp_cache)),
        "cpu": _part("cpu", lambda: cpu.collect(root, arch=arch)),
        "disks": _part("disks", lambda: [d.to_dict() for d in lister()]),
        "raid_arrays": _part("raid_arrays", lambda: raid_arrays(root)),
        "memory": _part("memory", lambda: memory.collect(root)),
        "system_vendor": _part("system_vendor", lambda: dmi.collect(root)),
        "boot": _part("boot", lambda: boot.collect(root, getattr(config, "bootif", None))),
        "hostname": _part("hostname", socket.gethostname),
    }
    # a real Config says whether this is a ramdisk (where the IPMI drivers may be loaded)
    bmc_info = _part("bmc", lambda: bmc.collect(
        root, skip=bool(getattr(config, "skip_bmc_detect", False)),
        config=config if isinstance(config, Config) else None))
    bmc_info = bmc_info or {"bmc_address": None, "bmc_v6address": None}
    result["bmc_address"] = bmc_info.get("bmc_address")
    result["bmc_v6address"] = bmc_info.get("bmc_v6address")
    if bmc_info.get("bmc_mac"):
        result["bmc_mac"] = bmc_info["bmc_mac"]
    return result
