"""VLAN sub-interfaces asked for with ``ipa-enable-vlan-interfaces``.

Each entry is ``IFACE.VID`` (that VLAN on that NIC), ``IFACE`` (the VLANs
the switch announced on that NIC over LLDP) or ``all`` (the announced VLANs
on every NIC that heard LLDP).  The announced VLANs are the port VLAN ID and
the VLAN name TLVs of the IEEE 802.1 organisationally specific set.  A
sub-interface is named ``IFACE.VID``, created with ``ip link add ... type
vlan`` and brought up; one that already exists is left as it is, so running
this twice is harmless.  Problems are logged and the entry skipped: a
missing VLAN must not keep the agent from starting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent import tools
from agent.disk import sysfs
from agent.errors import AgentError
from agent.hardware import interfaces, lldp

LOG = logging.getLogger(__name__)

ALL = "all"
IFNAME_MAX = 15            # IFNAMSIZ less the NUL
TLV_ORG_SPECIFIC = 127
OUI_IEEE_8021 = bytes.fromhex("0080c2")
SUBTYPE_PORT_VLAN_ID = 1
SUBTYPE_VLAN_NAME = 3
VID_MIN, VID_MAX = 1, 4094  # 0 means "no VLAN", 4095 is reserved


@dataclasses.dataclass(frozen=True)
class VlanEntry:
    interface: str | None   # None: every interface that heard LLDP ("all")
    vid: int | None         # None: the VLANs LLDP announced on the interface


def _valid_ifname(name: str) -> bool:
    return (0 < len(name) <= IFNAME_MAX and name not in (".", "..")
            and not any(c in name for c in "/: \t\n"))


def parse_entry(text: str) -> VlanEntry:
    """One setting entry; ValueError says what is wrong with it."""
    text = text.strip()
    if text.lower() == ALL:
        return VlanEntry(None, None)
    interface, vid = text, None
    if "." in text:
        interface, _, tail = text.rpartition(".")
        if not tail.isdigit():
            raise ValueError(f"{text!r}: the part after the last dot must be a VLAN ID")
        vid = int(tail)
        if not VID_MIN <= vid <= VID_MAX:
            raise ValueError(f"{text!r}: VLAN ID {vid} is outside {VID_MIN}-{VID_MAX}")
    if not _valid_ifname(interface):
        raise ValueError(f"{text!r}: {interface!r} is not an interface name")
    return VlanEntry(interface, vid)


def parse_entries(entries: Iterable[str]) -> list[VlanEntry]:
    """Valid entries in order, duplicates dropped; invalid ones are logged."""
    result: list[VlanEntry] = []
    for text in entries:
        try:
            entry = parse_entry(text)
        except ValueError as exc:
            LOG.error("ipa-enable-vlan-interfaces: entry ignored: %s", exc)
            continue
        if entry not in result:
            result.append(entry)
    return result


def vlans_from_tlvs(tlvs: Sequence[Sequence[Any]]) -> list[int]:
    """VLAN IDs announced in raw TLVs (port VLAN ID and VLAN names), sorted."""
    found: set[int] = set()
    for tlv in tlvs:
        try:
            tlv_type, value = int(tlv[0]), bytes.fromhex(str(tlv[1]))
        except (ValueError, TypeError, IndexError):
            continue
        if tlv_type != TLV_ORG_SPECIFIC or value[:3] != OUI_IEEE_8021 or len(value) < 6:
            continue
        subtype = value[3]
        # port VLAN ID: u16 VID; VLAN name: u16 VID, u8 length, name
        if subtype in (SUBTYPE_PORT_VLAN_ID, SUBTYPE_VLAN_NAME):
            vid = int.from_bytes(value[4:6], "big")
            if VID_MIN <= vid <= VID_MAX:
                found.add(vid)
    return sorted(found)


def needs_lldp(entries: Iterable[VlanEntry]) -> bool:
    return any(e.vid is None for e in entries)


def plan(entries: Iterable[VlanEntry],
         lldp_tlvs: Mapping[str, Sequence[Sequence[Any]]] | None) -> list[tuple[str, int]]:
    """(parent, VID) pairs to create, in entry order, without repeats."""
    heard = lldp_tlvs or {}
    pairs: list[tuple[str, int]] = []
    for entry in entries:
        if entry.vid is not None and entry.interface is not None:
            wanted = [(entry.interface, entry.vid)]
        else:
            parents = [entry.interface] if entry.interface else sorted(heard)
            wanted = [(p, vid) for p in parents for vid in vlans_from_tlvs(heard.get(p) or [])]
            if not wanted:
                LOG.warning("ipa-enable-vlan-interfaces: LLDP announced no VLAN on %s",
                            entry.interface or "any interface")
        for pair in wanted:
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def _exists(name: str, root: str) -> bool:
    return os.path.exists(sysfs.path(root, "/sys/class/net", name))


def _capture_for(entries: Sequence[VlanEntry], timeout: float, root: str) -> dict[str, Any]:
    names: list[str] = []
    if any(e.interface is None for e in entries):
        names = [i["name"] for i in interfaces.collect(root)]
    names += [e.interface for e in entries
              if e.vid is None and e.interface and e.interface not in names]
    return lldp.capture_up(names, timeout, root)


def _ensure(parent: str, vid: int, root: str) -> str | None:
    name = f"{parent}.{vid}"
    if len(name) > IFNAME_MAX:
        LOG.error("VLAN interface %s: name longer than %d characters; not created",
                  name, IFNAME_MAX)
        return None
    if not _exists(parent, root):
        LOG.error("VLAN interface %s: there is no interface %s", name, parent)
        return None
    try:
        if _exists(name, root):
            LOG.info("VLAN interface %s already exists", name)
        else:
            try:
                tools.run("ip", "link", "add", "link", parent, "name", name,
                          "type", "vlan", "id", vid, timeout=30)
            except AgentError:
                if not _exists(name, root):   # created meanwhile by someone else is fine
                    raise
            LOG.info("VLAN interface %s created", name)
        # the sub-interface carries nothing while its parent is down
        if not lldp.is_up(parent, root):
            tools.run("ip", "link", "set", "dev", parent, "up", timeout=30)
        tools.run("ip", "link", "set", "dev", name, "up", timeout=30)
    except AgentError as exc:
        LOG.error("VLAN interface %s could not be set up: %s", name, exc)
        return None
    return name


def create_vlan_interfaces(config: Any, lldp_tlvs: Mapping[str, Any] | None = None,
                           *, root: str = "/") -> list[str]:
    """Create what ``config.enable_vlan_interfaces`` asks for; never raises.

    ``lldp_tlvs`` is a capture already made (interface -> TLVs); when it is
    None and an entry needs announced VLANs, the up NICs are listened on for
    ``config.lldp_timeout`` seconds first.  Returns the VLAN interfaces that
    are now present and up (created now or already there), in order.
    """
    try:
        entries = parse_entries(getattr(config, "enable_vlan_interfaces", None) or [])
        if not entries:
            return []
        if lldp_tlvs is None and needs_lldp(entries):
            lldp_tlvs = _capture_for(entries, float(getattr(config, "lldp_timeout", 30.0)),
                                     root)
        made = [_ensure(parent, vid, root) for parent, vid in plan(entries, lldp_tlvs)]
        return [name for name in made if name]
    except Exception:  # noqa: BLE001 - start-up continues without VLANs
        LOG.exception("VLAN interfaces could not be created")
        return []
