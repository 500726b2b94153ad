"""The ``default`` and ``logs`` collectors: what Ironic's default hooks read.

``default`` adds ``inventory`` (the same document as poll.get_hardware_info),
``root_disk`` (the disk the root-device hints choose, or the smallest disk
of 4 GiB or more when there are none), ``boot_interface`` (the PXE MAC),
``configuration`` (collectors and hardware managers, with versions) and
``lldp_raw`` (interface -> TLVs, from the inventory's capture) with ipa-collect-lldp.
``logs`` adds the same capped tarball as log.collect_system_logs, base64.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from agent import __version__
from agent.errors import AgentError
from agent.hardware import hints, lldp, managers
from agent.state import AgentState

LOG = logging.getLogger(__name__)


def collect_default(state: AgentState, data: dict[str, Any]) -> None:
    inventory = managers.dispatch(state, "list_hardware_info")
    data["inventory"] = inventory
    data["root_disk"] = _root_disk(state, inventory)
    pxe = (inventory.get("boot") or {}).get("pxe_interface")
    data["boot_interface"] = _mac_of(pxe, inventory) if pxe else None
    if state.config.collect_lldp:
        # the inventory above already listened; a second capture would cost another timeout
        data["lldp_raw"] = lldp.raw_from_inventory(inventory)
    data["configuration"] = {
        "collectors": list(state.config.inspection_collectors),
        "managers": [{"name": name, "version": version}
                     for name, version in managers.versions(state).items()],
        "agent_version": __version__,
    }


def _mac_of(pxe: str, inventory: dict[str, Any]) -> str:
    """BOOTIF is ``01-aa-bb-..`` from PXE or a plain MAC from iPXE; Ironic wants a MAC."""
    text = pxe.lower().replace("-", ":")
    if len(text) == 20 and text.startswith("01:"):
        text = text[3:]
    for iface in inventory.get("interfaces") or []:
        if iface.get("name") == pxe:
            return str(iface.get("mac_address"))
    return text


def _root_disk(state: AgentState, inventory: dict[str, Any]) -> dict[str, Any] | None:
    try:
        disks = managers.list_disks(state)
        disk, _ = hints.select_root_device(disks, hints.hints_from_node(state.node))
    except AgentError as exc:
        LOG.info("inspection: no root disk: %s", exc.details)
        return None
    for entry in inventory.get("disks") or []:
        if entry.get("name") == disk.name:
            return dict(entry)
    return dict(disk.to_dict())


def collect_logs(state: AgentState, data: dict[str, Any]) -> None:
    # the log extension owns the collection; importing it here keeps one copy
    from agent.extensions import log

    blob = log.pack(log.gather(), state.config.log_cap_bytes)
    data["logs"] = base64.b64encode(blob).decode()
