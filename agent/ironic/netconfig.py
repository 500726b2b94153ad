"""Static addressing from ``network_data.json`` (sites without DHCP), before lookup.

Ironic writes the node's network data onto the virtual-media ISO as
``openstack/latest/network_data.json``, in the OpenStack metadata format:
``links`` (``ethernet_mac_address``, ``mtu``), ``networks`` (``type`` ipv4 or
ipv6 for static addressing, ``link``, ``ip_address``, ``netmask``, ``routes``,
``services``) and top-level ``services`` (``{"type": "dns", "address": ...}``).

Only physical links matched by MAC to a local interface are configured; bond
and VLAN links, and DHCP/SLAAC networks, are reported as skipped.  Every
command is a ``replace`` or ``set``, so running twice changes nothing, and no
failure is fatal: each is logged and returned in ``errors`` while the rest go
on, because a half-configured network may still reach Ironic and a refused
start never does.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from agent import tools
from agent.errors import AgentError

LOG = logging.getLogger(__name__)

STATIC_TYPES = ("ipv4", "ipv6")
UNSUPPORTED_LINKS = ("bond", "vlan")


def configure(network_data: Mapping[str, Any], *, ramdisk: bool,
              resolv_conf: str = "/etc/resolv.conf") -> dict[str, Any]:
    """Apply ``network_data``; return ``{"configured", "skipped", "errors", "dns"}``."""
    result: dict[str, Any] = {"configured": [], "skipped": [], "errors": [], "dns": []}
    try:
        local = local_interfaces()
    except (AgentError, ValueError) as exc:
        _error(result, f"cannot list the network interfaces: {_why(exc)}")
        return result
    links = _links(network_data, local, result)
    networks = [n for n in _list(network_data, "networks", result) if isinstance(n, dict)]
    routes: list[list[str]] = []
    for net in networks:
        where = f"network {net.get('id', '?')}"
        kind = str(net.get("type", ""))
        if kind not in STATIC_TYPES:
            result["skipped"].append(f"{where}: type {kind or 'none'} is not static; "
                                     "left to DHCP/SLAAC")
            continue
        ifname = links.get(str(net.get("link")))
        if ifname is None:
            result["skipped"].append(f"{where}: its link {net.get('link')!r} is not a local "
                                     "interface")
            continue
        try:
            address = _interface_address(net)
            routes += _routes(net, ifname)
        except ValueError as exc:
            _error(result, f"{where}: {exc}")
            continue
        if _ip(result, "addr", "replace", address, "dev", ifname):
            result["configured"].append(f"{ifname}: {address}")
        result["dns"] += _dns(net.get("services"))
    # after every address: a gateway is only reachable once its subnet is on a link
    for args in routes:
        if _ip(result, "route", "replace", *args):
            result["configured"].append(f"route {' '.join(args)}")
    result["dns"] += _dns(network_data.get("services"))
    result["dns"] = list(dict.fromkeys(result["dns"]))
    if result["dns"] and ramdisk:
        _write_resolv_conf(resolv_conf, result["dns"], result)
    elif result["dns"]:
        result["skipped"].append(f"nameservers {', '.join(result['dns'])}: not a ramdisk, "
                                 f"{resolv_conf} left alone")
    for line in result["configured"]:
        LOG.info("static network: %s", line)
    for line in result["skipped"]:
        LOG.info("static network: skipped %s", line)
    return result


def local_interfaces() -> dict[str, str]:
    """MAC (lower case) → interface name, as ``ip`` sees this network namespace."""
    out = tools.run("ip", "-j", "link", "show", timeout=30).stdout
    found: dict[str, str] = {}
    for link in json.loads(out or "[]"):
        mac = str(link.get("address") or "").lower()
        if link.get("link_type") == "ether" and mac:
            found.setdefault(mac, link["ifname"])
    return found


def _links(data: Mapping[str, Any], local: dict[str, str],
           result: dict[str, Any]) -> dict[str, str]:
    """Link id → local interface name, each matched link set up (and its MTU set)."""
    links = {}
    for link in _list(data, "links", result):
        if not isinstance(link, dict):
            _error(result, f"a link is not an object: {link!r}")
            continue
        where = f"link {link.get('id', '?')}"
        if str(link.get("type")) in UNSUPPORTED_LINKS:
            result["skipped"].append(f"{where}: {link['type']} links are not supported")
            continue
        mac = str(link.get("ethernet_mac_address") or "").lower()
        ifname = local.get(mac)
        if ifname is None:
            result["skipped"].append(f"{where}: no local interface has MAC {mac or 'none'}")
            continue
        mtu = link.get("mtu")
        if mtu is not None and not (isinstance(mtu, int) and mtu >= 68):
            _error(result, f"{where}: mtu {mtu!r} is not a number of at least 68; not set")
        elif mtu is not None:
            _ip(result, "link", "set", "dev", ifname, "mtu", mtu)
        if _ip(result, "link", "set", "dev", ifname, "up"):
            links[str(link.get("id"))] = ifname
    return links


def _list(data: Mapping[str, Any], key: str, result: dict[str, Any]) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        _error(result, f"{key} is not a list")
        return []
    return value


def _prefix(netmask: Any, version: int) -> int:
    """A prefix length from a dotted/colon netmask or a number; ValueError if neither."""
    text = str(netmask).strip()
    if text.isdigit():
        prefix = int(text)
    else:
        bits = int(ipaddress.ip_address(text))
        width = 32 if version == 4 else 128
        prefix = bin(bits).count("1")
        if ipaddress.ip_address(text).version != version or bits != (
                ((1 << prefix) - 1) << (width - prefix)):
            raise ValueError(f"netmask {text} is not a contiguous IPv{version} mask")
    if not 0 <= prefix <= (32 if version == 4 else 128):
        raise ValueError(f"prefix {prefix} is out of range for IPv{version}")
    return prefix


def _interface_address(net: Mapping[str, Any]) -> str:
    raw = str(net.get("ip_address") or "")
    if not raw:
        raise ValueError("no ip_address")
    if "/" in raw:
        iface = ipaddress.ip_interface(raw)
    else:
        addr = ipaddress.ip_address(raw)
        mask = net.get("netmask")
        prefix = _prefix(mask, addr.version) if mask is not None else addr.max_prefixlen
        iface = ipaddress.ip_interface(f"{addr}/{prefix}")
    if iface.version != (4 if net.get("type") == "ipv4" else 6):
        raise ValueError(f"{raw} does not match the network type {net.get('type')}")
    return str(iface)


def _routes(net: Mapping[str, Any], ifname: str) -> list[list[str]]:
    routes = []
    for route in net.get("routes") or []:
        if not isinstance(route, dict):
            raise ValueError(f"a route is not an object: {route!r}")
        target = ipaddress.ip_address(str(route.get("network", "")))
        prefix = _prefix(route.get("netmask", target.max_prefixlen), target.version)
        network = ipaddress.ip_network(f"{target}/{prefix}", strict=False)
        gateway = ipaddress.ip_address(str(route.get("gateway", "")))
        routes.append([str(network), "via", str(gateway), "dev", ifname])
    return routes


def _dns(services: Any) -> list[str]:
    found = []
    for service in services if isinstance(services, list) else []:
        if isinstance(service, dict) and service.get("type") == "dns":
            try:
                found.append(str(ipaddress.ip_address(str(service.get("address", "")))))
            except ValueError:
                LOG.warning("static network: nameserver %r is not an IP address; ignored",
                            service.get("address"))
    return found


def _ip(result: dict[str, Any], *args: Any) -> bool:
    try:
        tools.run("ip", *args, timeout=30)
    except AgentError as exc:
        _error(result, f"ip {' '.join(str(a) for a in args)}: {_why(exc)}")
        return False
    return True


def _write_resolv_conf(path: str, servers: list[str], result: dict[str, Any]) -> None:
    """Ours first, the file's other lines kept: a rerun writes the same bytes."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read().splitlines()
    except FileNotFoundError:
        old = []
    except OSError as exc:
        _error(result, f"cannot read {path}: {exc}")
        return
    ours = [f"nameserver {s}" for s in servers]
    lines = ours + [line for line in old if line.strip() not in ours]
    try:
        tmp = f"{path}.deploy-agent"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        _error(result, f"cannot write {path}: {exc}")
        return
    result["configured"].append(f"{path}: {', '.join(servers)}")


def _error(result: dict[str, Any], message: str) -> None:
    LOG.error("static network: %s", message)
    result["errors"].append(message)


def _why(exc: Exception) -> str:
    return exc.details if isinstance(exc, AgentError) and exc.details else str(exc)
