"""The ``pci-devices``, ``numa-topology``, ``dmi-decode`` and ``usb-devices`` collectors.

Each adds one key in the shape ironic-python-agent's collector of the same
name posts, so Ironic's hooks (``pci-devices``, ``accelerators``) and any
rule written against IPA's plugin data read it unchanged:

``pci_devices``
    ``[{"vendor_id": "8086", "product_id": "1572", "class": "020000",
    "revision": "01", "bus": "0000:18:00.0"}]`` from /sys/bus/pci/devices:
    hex without ``0x``; ``revision`` is None when the kernel has no such file.
``numa_topology``
    ``{"ram": [{"numa_node", "size_kb"}], "cpus": [{"cpu", "numa_node",
    "thread_siblings"}], "nics": [{"name", "numa_node"}]}``: ``cpu`` is the
    core id, unique per node, with its logical CPUs as ``thread_siblings``;
    a NIC's node is its device's (or, for virtio, the PCI parent's); -1 is
    the kernel's "no NUMA affinity".
``dmi``
    ``dmidecode -t bios -t system -t processor -t memory`` parsed: ``bios``
    (type 0), ``system`` (type 1, an addition to IPA's keys), ``cpu`` (type
    4, one per socket), ``memory`` (the first type-16 array's fields with
    ``Number Of Devices`` summed over all arrays, and ``devices``: type 17).
    Fields keep dmidecode's labels; a label followed by indented lines
    (``Characteristics``, ``Flags``) holds a list.
``usb_devices``
    ``[{"product", "vendor", "handle"}]`` from /sys/bus/usb/devices (IPA
    runs ``lshw -c usb``): the device's own strings, else its hex IDs;
    ``handle`` is lshw's ``USB:<bus>:<device number>``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from agent import tools
from agent.disk import sysfs
from agent.state import AgentState

LOG = logging.getLogger(__name__)

DMI_TYPES = ("bios", "system", "processor", "memory")
_HANDLE = re.compile(r"^Handle 0x[0-9A-Fa-f]+, DMI type (\d+),")
_CPU_DIR = re.compile(r"^cpu(\d+)$")
_NODE_DIR = re.compile(r"^node(\d+)$")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


# ------------------------------------------------------------------ PCI

def _hex(text: str | None) -> str | None:
    """'0x8086' -> '8086' (sysfs ids are 0x-prefixed hex)."""
    if not text or not text.lower().startswith("0x"):
        return None
    return text[2:].lower()


def pci_devices(root: str = "/") -> list[dict[str, Any]]:
    base = sysfs.path(root, "/sys/bus/pci/devices")
    found = []
    for address in sysfs.listdir(base):
        device = os.path.join(base, address)
        ids = [_hex(sysfs.read_str(os.path.join(device, name)))
               for name in ("vendor", "device", "class")]
        if None in ids:
            LOG.warning("PCI device %s: vendor, device or class unreadable; skipped", address)
            continue
        found.append({"vendor_id": ids[0], "product_id": ids[1], "class": ids[2],
                      "revision": _hex(sysfs.read_str(os.path.join(device, "revision"))),
                      "bus": address})
    return found


def collect_pci_devices(state: AgentState, data: dict[str, Any]) -> None:
    data["pci_devices"] = pci_devices()


# ------------------------------------------------------------------ NUMA

def _node_dirs(root: str) -> list[tuple[int, str]]:
    base = sysfs.path(root, "/sys/devices/system/node")
    nodes = []
    for name in sysfs.listdir(base):
        match = _NODE_DIR.match(name)
        if match and os.path.isdir(os.path.join(base, name)):
            nodes.append((int(match.group(1)), os.path.join(base, name)))
    return nodes


def _node_kb(node_dir: str) -> int:
    # "Node 0 MemTotal:        6514408 kB"; some kernels print other units
    units = {"kb": 1, "mb": 1024, "gb": 1024 * 1024}
    for line in (sysfs.read_str(os.path.join(node_dir, "meminfo")) or "").splitlines():
        if "MemTotal:" in line:
            fields = line.split(":", 1)[1].split()
            return int(fields[0]) * units[fields[1].lower() if len(fields) > 1 else "kb"]
    raise OSError(f"{node_dir}/meminfo has no MemTotal")


def pci_address_of(device: str) -> str | None:
    """The PCI function a device sits on (``0000:18:00.0``), walking up from ``device``."""
    current = sysfs.realpath(device)
    while current and current != "/":
        if _PCI_ADDRESS.match(os.path.basename(current)):
            return os.path.basename(current)
        current = os.path.dirname(current)
    return None


def _nic_numa_node(device: str) -> int | None:
    """The NIC device's node; virtio NICs hang below their PCI function, which has it."""
    current = sysfs.realpath(device)
    while current and current != "/" and os.path.basename(current) != "devices":
        value = sysfs.read_int(os.path.join(current, "numa_node"))
        if value is not None:
            return value
        if _PCI_ADDRESS.match(os.path.basename(current)):
            return None
        current = os.path.dirname(current)
    return None


def numa_topology(root: str = "/") -> dict[str, Any] | None:
    nodes = _node_dirs(root)
    if not nodes:
        return None                    # CONFIG_NUMA off: IPA posts no key either
    ram = [{"numa_node": node, "size_kb": _node_kb(path)} for node, path in nodes]
    cores: dict[tuple[int, int], dict[str, Any]] = {}
    for node, path in nodes:
        threads = sorted(int(m.group(1)) for m in map(_CPU_DIR.match, sysfs.listdir(path)) if m)
        for thread in threads:
            core = sysfs.read_int(os.path.join(path, f"cpu{thread}", "topology", "core_id"))
            if core is None:
                raise OSError(f"no core_id for cpu{thread} in node{node}")
            entry = cores.setdefault((node, core), {"cpu": core, "numa_node": node,
                                                    "thread_siblings": []})
            entry["thread_siblings"].append(thread)
    nics = []
    net = sysfs.path(root, "/sys/class/net")
    for name in sysfs.listdir(net):
        device = os.path.join(net, name, "device")
        if not os.path.isdir(device):
            continue                   # virtual interfaces have no device and no node
        node_id = _nic_numa_node(device)
        if node_id is None:
            LOG.info("NIC %s: no numa_node in its device path; not listed", name)
            continue
        nics.append({"name": name, "numa_node": node_id})
    return {"ram": ram, "cpus": list(cores.values()), "nics": nics}


def collect_numa_topology(state: AgentState, data: dict[str, Any]) -> None:
    try:
        topology = numa_topology()
    except (OSError, ValueError, KeyError) as exc:
        # as IPA: an odd node tree costs the key, not the inspection
        LOG.warning("NUMA topology not reported: %s", exc)
        return
    if topology is None:
        LOG.info("no /sys/devices/system/node: this kernel reports no NUMA topology")
        return
    data["numa_topology"] = topology


# ------------------------------------------------------------------ dmidecode

def _parse_block(lines: list[str]) -> dict[str, Any]:
    """One handle's fields: tab-indented ``Label: value``; deeper lines extend a list."""
    rows: dict[str, Any] = {"Handle": lines[0]}
    key = None
    for line in lines[1:]:
        depth = len(line) - len(line.lstrip("\t"))
        text = line.strip()
        if depth >= 2 and isinstance(rows.get(key or ""), list):
            rows[key or ""].append(text)
        elif depth == 1 and ":" in text:
            key, value = (part.strip() for part in text.split(":", 1))
            rows[key] = value if value else []
    return rows


def parse_dmidecode(text: str) -> dict[str, Any]:
    """dmidecode's text output in IPA's ``dmi`` shape (see the module docstring)."""
    result: dict[str, Any] = {"bios": {}, "system": {}, "cpu": [], "memory": {"devices": []}}
    arrays: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        match = _HANDLE.match(lines[0]) if lines else None
        if not match:
            continue                   # the "# dmidecode 3.4" / "SMBIOS ... present." header
        kind = int(match.group(1))
        if kind not in (0, 1, 4, 16, 17):
            continue
        rows = _parse_block(lines)
        if kind == 0:
            result["bios"] = rows
        elif kind == 1:
            result["system"] = rows
        elif kind == 4:
            result["cpu"].append(rows)
        elif kind == 16:
            arrays.append(rows)
        else:
            devices.append(rows)
    if arrays:
        memory = {k: v for k, v in arrays[0].items() if k != "Handle"}
        memory["Number Of Devices"] = sum(int(a.get("Number Of Devices") or 0) for a in arrays)
        result["memory"] = memory
    result["memory"]["devices"] = devices
    return result


def has_smbios(root: str = "/") -> bool:
    return any(os.path.exists(sysfs.path(root, p))
               for p in ("/sys/firmware/dmi/tables/DMI", "/sys/class/dmi/id"))


def dmi_info(root: str = "/") -> dict[str, Any] | None:
    """Parsed dmidecode output; None where there is nothing to decode."""
    if "dmidecode" not in tools.tools_for_this_machine():
        LOG.info("dmidecode is not used on this architecture (no SMBIOS)")
        return None
    if not has_smbios(root):
        # VMs without SMBIOS (Firecracker, some arm64 boards): dmidecode only says "sorry"
        LOG.info("no SMBIOS tables in /sys/firmware/dmi: no dmi data")
        return None
    args: list[str] = []
    for kind in DMI_TYPES:
        args += ["-t", kind]
    return parse_dmidecode(tools.run("dmidecode", *args, timeout=60).stdout)


def collect_dmi_decode(state: AgentState, data: dict[str, Any]) -> None:
    info = dmi_info()
    if info is not None:
        data["dmi"] = info


# ------------------------------------------------------------------ USB

def usb_devices(root: str = "/") -> list[dict[str, Any]]:
    base = sysfs.path(root, "/sys/bus/usb/devices")
    found: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for name in sysfs.listdir(base):
        if ":" in name:
            continue                   # "1-1:1.0" is an interface of device 1-1
        device = os.path.join(base, name)
        attrs = {attr: sysfs.read_str(os.path.join(device, attr))
                 for attr in ("product", "idProduct", "manufacturer", "idVendor")}
        bus = sysfs.read_int(os.path.join(device, "busnum"))
        number = sysfs.read_int(os.path.join(device, "devnum"))
        found.append(((bus or 0, number or 0), {
            "product": attrs["product"] or attrs["idProduct"],
            "vendor": attrs["manufacturer"] or attrs["idVendor"],
            "handle": f"USB:{bus}:{number}" if bus is not None and number is not None else None,
        }))
    # bus and device number order, as lshw lists them ("usb1" sorts after "1-14" by name)
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


def collect_usb_devices(state: AgentState, data: dict[str, Any]) -> None:
    data["usb_devices"] = usb_devices()
