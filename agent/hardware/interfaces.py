"""The ``interfaces[]`` inventory list from /sys/class/net and two ioctls.

Only NICs backed by a device are listed (no loopback, bridges or tunnels).
The MAC is the permanent one from ETHTOOL_GPERMADDR, because bonding and
teaming rewrite the current address and Ironic matches ports by the burned-in
one.  IPv4 comes from SIOCGIFADDR, IPv6 from /proc/net/if_inet6: no process
is spawned.  ``lldp`` is null unless an LLDP timeout is given (ipa-collect-lldp):
then every listed NIC that is up is listened on at once, and a NIC that heard
an LLDPDU gets its TLV list.
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct
from typing import Any

from agent.disk import sysfs

LOG = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915
SIOCETHTOOL = 0x8946
ETHTOOL_GPERMADDR = 0x20
ARPHRD_INFINIBAND = 32
_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ZERO_MACS = {"00:00:00:00:00:00", ""}


def permanent_mac(sock: socket.socket, name: str) -> str | None:
    """The burned-in MAC, or None when the driver does not report one."""
    # struct ethtool_perm_addr {u32 cmd; u32 size; u8 data[size]}
    buf = array.array("B", struct.pack("II", ETHTOOL_GPERMADDR, 32) + bytes(32))
    ifreq = struct.pack("16sP", name.encode()[:15], buf.buffer_info()[0])
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    size = struct.unpack_from("I", buf, 4)[0]
    mac = ":".join(f"{b:02x}" for b in buf[8:8 + min(size, 32)])
    return None if mac in _ZERO_MACS or size != 6 else mac


def ipv4_address(sock: socket.socket, name: str) -> str | None:
    ifreq = struct.pack("16s16s", name.encode()[:15], bytes(16))
    try:
        out = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, ifreq)
    except OSError:
        return None
    return socket.inet_ntoa(out[20:24])


def ipv6_addresses(root: str) -> dict[str, str]:
    """First IPv6 address per interface, global scope preferred over link-local."""
    text = sysfs.read_str(sysfs.path(root, "/proc/net/if_inet6")) or ""
    best: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        addr = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
        rank = 1 if int(fields[3], 16) == 0x20 else 0   # 0x20: link scope
        current = best.get(fields[5])
        if current is None or rank < current[0]:
            best[fields[5]] = (rank, addr)
    return {name: addr for name, (_, addr) in best.items()}


def _client_id(address: str) -> str:
    # InfiniBand: Ironic's DHCP client-id is a fixed prefix plus the port GUID
    return "ff:00:00:00:00:00:02:00:00:02:c9:00:" + ":".join(address.split(":")[-8:])


def _pci_address(device: str | None) -> str | None:
    while device and device != "/":
        base = os.path.basename(device)
        if _PCI.match(base):
            return base
        device = os.path.dirname(device)
    return None


def _read_interface(root: str, name: str, sock: socket.socket | None,
                    v6: dict[str, str]) -> dict[str, Any] | None:
    base = sysfs.path(root, "/sys/class/net", name)
    device_link = os.path.join(base, "device")
    if not os.path.exists(device_link):
        return None  # virtual: lo, bridges, bonds, ifb, tunnels
    address = (sysfs.read_str(os.path.join(base, "address")) or "").lower()
    link_type = sysfs.read_int(os.path.join(base, "type"))
    perm = permanent_mac(sock, name) if sock else None
    mac = perm or address
    if link_type == ARPHRD_INFINIBAND:
        mac = ":".join(address.split(":")[-8:][:3] + address.split(":")[-3:])
    if not mac or mac in _ZERO_MACS:
        return None
    speed = sysfs.read_int(os.path.join(base, "speed"))
    device = sysfs.realpath(device_link)
    return {
        "name": name,
        "mac_address": mac,
        "ipv4_address": ipv4_address(sock, name) if sock else None,
        "ipv6_address": v6.get(name),
        "has_carrier": sysfs.read_int(os.path.join(base, "carrier")) == 1,
        "lldp": None,
        "vendor": sysfs.read_str(os.path.join(device_link, "vendor")),
        "product": sysfs.read_str(os.path.join(device_link, "device")),
        "client_id": _client_id(address) if link_type == ARPHRD_INFINIBAND else None,
        "biosdevname": None,
        "speed_mbps": speed if speed and speed > 0 else None,
        "pci_address": _pci_address(device),
        "driver": sysfs.link_name(os.path.join(device_link, "driver")),
    }


def collect(root: str = "/", live: bool = True, lldp_timeout: float | None = None,
            lldp_cache: Any = None) -> list[dict[str, Any]]:
    """All physical NICs; ``live=False`` skips the ioctls (fixture trees).

    ``lldp_timeout`` (seconds) turns on the LLDP capture that fills ``lldp``;
    an ``lldp.CaptureCache`` makes later calls reuse what was heard.
    """
    result = _collect(root, live)
    if lldp_timeout is not None and result:
        from agent.hardware import lldp  # raw sockets only when LLDP is asked for
        names = [i["name"] for i in result]
        heard = (lldp_cache.get(names, lldp_timeout, root) if lldp_cache is not None
                 else lldp.capture_up(names, lldp_timeout, root))
        for info in result:
            info["lldp"] = heard.get(info["name"]) or None
    return result


def _collect(root: str, live: bool) -> list[dict[str, Any]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if live else None
    try:
        v6 = ipv6_addresses(root)
        result = []
        for name in sysfs.listdir(sysfs.path(root, "/sys/class/net")):
            try:
                info = _read_interface(root, name, sock, v6)
            except (OSError, ValueError) as exc:
                LOG.warning("interface %s skipped in the inventory: %s", name, exc)
                continue
            if info:
                result.append(info)
        return result
    finally:
        if sock:
            sock.close()
