"""The ``extra-hardware`` collector: ``data`` as ``hardware-detect`` lists it.

Ironic's ``extra-hardware`` hook turns ``[category, item, key, value]``
lists into ``plugin_data["extra"][category][item][key]`` (values that parse
as integers become integers) for inspection rules.  IPA runs the
``hardware-detect`` tool; we read the same facts from sysfs, /proc, the
parsed dmidecode tables and ipmitool, under hardware-detect's names:

==========  =====================  ==================================================
category    item                   keys (source)
==========  =====================  ==================================================
system      product                name, vendor, version, serial, uuid (DMI; device tree)
system      motherboard            name, vendor, version, serial (DMI board_*)
firmware    bios                   vendor, version, date (DMI; device tree)
system      kernel                 version, arch, cmdline (secrets masked)
system      ipmi                   channel (first LAN channel ipmitool answers on)
ipmi        lan                    every ``ipmitool lan print`` field, lower-dashed
cpu         physical               number (sockets), smt (smt/control)
cpu         physical_N             vendor, product, cores, threads, threads_per_core,
                                   family, model, stepping, architecture, flags,
                                   min_Mhz, max_Mhz, current_Mhz, boost
cpu         logical                number (online CPUs)
cpu         logical_N              governor (cpufreq)
numa        nodes                  count
numa        node_N                 cpu_count, cpu_mask (hex, lscpu -x style)
memory      total                  size (bytes: DIMMs, else hotplug blocks, else MemTotal)
memory      banks                  count (type-17 slots)
memory      bank:N                 size (bytes), clock (Hz), description, vendor,
                                   product, serial, slot (type-17; empty: slot,
                                   description "[empty]")
disk        logical                count
disk        <kname>                size (GB, 10^9), vendor, model, rev, serial,
                                   rotational, physical_block_size, optimal_io_size,
                                   nr_requests, scheduler, Write Cache Enable,
                                   Read Cache Disable, id / wwn-id / scsi-id (by-id)
network     <ifname>               serial (MAC), businfo (pci@...), driver, link
                                   (yes/no), size (bit/s), speed ("10Gbit/s"), duplex
==========  =====================  ==================================================

``serial`` for disks is ours (hardware-detect gets it from smartctl).  Facts
a machine lacks are left out, never reported as null.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from collections.abc import Callable, Iterable
from typing import Any

from agent.config import Config
from agent.disk import sysfs
from agent.hardware import bmc, dmi, managers, memory
from agent.hardware.disks import Disk, list_disks
from agent.inspection import devices
from agent.state import AgentState

LOG = logging.getLogger(__name__)
Fact = list[Any]
_SECRET = re.compile(r"token|password|passwd|secret|key", re.IGNORECASE)
_SIZE_UNITS = {"kB": 2 ** 10, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}


def _add(facts: list[Fact], category: str, item: str, key: str, value: Any) -> None:
    if value is not None and value != "":
        facts.append([category, item, key, value])


# ------------------------------------------------------------------ system

def system_facts(root: str, dmi_tables: dict[str, Any] | None, arch: str) -> list[Fact]:
    facts: list[Fact] = []
    ident = sysfs.path(root, "/sys/class/dmi/id")

    def read(name: str) -> str | None:
        return sysfs.read_str(os.path.join(ident, name))
    vendor = dmi.collect(root)
    system = (dmi_tables or {}).get("system") or {}
    _add(facts, "system", "product", "name", vendor["product_name"])
    _add(facts, "system", "product", "vendor", vendor["manufacturer"])
    _add(facts, "system", "product", "version", read("product_version") or system.get("Version"))
    _add(facts, "system", "product", "serial", vendor["serial_number"])
    _add(facts, "system", "product", "uuid", (read("product_uuid") or system.get("UUID") or "")
         .lower())
    for key, attr in (("name", "board_name"), ("vendor", "board_vendor"),
                      ("version", "board_version"), ("serial", "board_serial")):
        _add(facts, "system", "motherboard", key, read(attr))
    firmware = vendor["firmware"]
    _add(facts, "firmware", "bios", "vendor", firmware["vendor"])
    _add(facts, "firmware", "bios", "version", firmware["version"])
    _add(facts, "firmware", "bios", "date", firmware["build_date"])
    _add(facts, "system", "kernel", "version",
         sysfs.read_str(sysfs.path(root, "/proc/sys/kernel/osrelease")))
    _add(facts, "system", "kernel", "arch", arch)
    cmdline = sysfs.read_str(sysfs.path(root, "/proc/cmdline"))
    _add(facts, "system", "kernel", "cmdline", mask_cmdline(cmdline) if cmdline else None)
    return facts


def mask_cmdline(cmdline: str) -> str:
    """``ipa-agent-token=abc`` -> ``ipa-agent-token=***``: plugin data is readable by admins."""
    words = []
    for word in cmdline.split():
        key, sep, _ = word.partition("=")
        words.append(f"{key}=***" if sep and _SECRET.search(key) else word)
    return " ".join(words)


def ipmi_facts(root: str, config: Config | None) -> list[Fact]:
    if config is not None:
        bmc.load_modules(config, root)
    found = bmc.lan_channel(root)
    if found is None:
        return []
    channel, fields = found
    facts: list[Fact] = [["system", "ipmi", "channel", channel]]
    for label, value in fields.items():
        _add(facts, "ipmi", "lan", "-".join(label.lower().split()), value)
    return facts


# ------------------------------------------------------------------ CPU and NUMA

def _cpuinfo(root: str) -> dict[int, dict[str, str]]:
    """/proc/cpuinfo as {processor number: fields}, keys lower-cased."""
    blocks: dict[int, dict[str, str]] = {}
    current: dict[str, str] = {}
    text = sysfs.read_str(sysfs.path(root, "/proc/cpuinfo")) or ""
    for line in text.splitlines() + [""]:
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
        elif current:
            if current.get("processor", "").isdigit():
                blocks[int(current["processor"])] = current
            current = {}
    return blocks


def _ranges(text: str | None) -> list[int]:
    cpus: list[int] = []
    for part in (text or "").split(","):
        if part.strip():
            low, _, high = part.strip().partition("-")
            cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def cpu_facts(root: str, arch: str) -> list[Fact]:
    facts: list[Fact] = []
    cpu_dir = sysfs.path(root, "/sys/devices/system/cpu")
    info = _cpuinfo(root)
    online = _ranges(sysfs.read_str(os.path.join(cpu_dir, "online"))) or sorted(info)

    def topo(cpu: int, name: str) -> int | None:
        return sysfs.read_int(os.path.join(cpu_dir, f"cpu{cpu}", "topology", name))
    packages: dict[int, list[int]] = {}
    for cpu in online:
        package = topo(cpu, "physical_package_id")
        if package is None or package < 0:
            package = _int(info.get(cpu, {}).get("physical id")) or 0
        packages.setdefault(package, []).append(cpu)
    facts.append(["cpu", "physical", "number", len(packages)])
    _add(facts, "cpu", "physical", "smt", sysfs.read_str(os.path.join(cpu_dir, "smt", "control")))
    boost = sysfs.read_str(os.path.join(cpu_dir, "cpufreq", "boost"))
    for index, package in enumerate(sorted(packages)):
        cpus = packages[package]
        tag = f"physical_{index}"
        first = info.get(cpus[0]) or next(iter(info.values()), {})
        cores = {topo(cpu, "core_id") for cpu in cpus} - {None}
        if boost is not None:
            facts.append(["cpu", tag, "boost", "enabled" if boost == "1" else "disabled"])
        _add(facts, "cpu", tag, "vendor", first.get("vendor_id"))
        _add(facts, "cpu", tag, "product", first.get("model name") or first.get("cpu"))
        _add(facts, "cpu", tag, "cores", len(cores) or len(cpus))
        _add(facts, "cpu", tag, "threads", len(cpus))
        _add(facts, "cpu", tag, "threads_per_core", len(cpus) // (len(cores) or len(cpus)))
        _add(facts, "cpu", tag, "family", _int(first.get("cpu family")))
        _add(facts, "cpu", tag, "model", _int(first.get("model")))
        _add(facts, "cpu", tag, "stepping", _int(first.get("stepping")))
        _add(facts, "cpu", tag, "architecture", arch)
        for key, attr in (("min_Mhz", "cpuinfo_min_freq"), ("max_Mhz", "cpuinfo_max_freq")):
            khz = sysfs.read_int(os.path.join(cpu_dir, f"cpu{cpus[0]}", "cpufreq", attr))
            _add(facts, "cpu", tag, key, khz / 1000 if khz else None)
        mhz = first.get("cpu mhz")
        _add(facts, "cpu", tag, "current_Mhz", float(mhz) if mhz else None)
        _add(facts, "cpu", tag, "flags", first.get("flags") or first.get("features"))
    facts.append(["cpu", "logical", "number", len(online)])
    for cpu in online:
        _add(facts, "cpu", f"logical_{cpu}", "governor", sysfs.read_str(
            os.path.join(cpu_dir, f"cpu{cpu}", "cpufreq", "scaling_governor")))
    return facts


def numa_facts(root: str) -> list[Fact]:
    base = sysfs.path(root, "/sys/devices/system/node")
    nodes = [(int(n[4:]), n) for n in sysfs.listdir(base) if re.fullmatch(r"node\d+", n)]
    if not nodes:
        return []
    facts: list[Fact] = [["numa", "nodes", "count", len(nodes)]]
    for number, name in sorted(nodes):
        cpus = _ranges(sysfs.read_str(os.path.join(base, name, "cpulist")))
        mask = sum(1 << cpu for cpu in cpus)
        facts.append(["numa", f"node_{number}", "cpu_count", len(cpus)])
        facts.append(["numa", f"node_{number}", "cpu_mask", hex(mask)])
    return facts


# ------------------------------------------------------------------ memory

def _dmi_bytes(text: str | None) -> int | None:
    """'32 GB' / '16384 MB' -> bytes; None for 'No Module Installed' and the like."""
    match = re.fullmatch(r"(\d+)\s*(kB|KB|MB|GB|TB)", (text or "").strip())
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)] if match else None


def _known(text: Any) -> str | None:
    if not isinstance(text, str) or text in ("Not Specified", "Unknown", "NO DIMM",
                                             "Not Provided", "None"):
        return None
    return text


def memory_facts(root: str, dmi_tables: dict[str, Any] | None) -> list[Fact]:
    facts: list[Fact] = []
    slots = ((dmi_tables or {}).get("memory") or {}).get("devices") or []
    installed = 0
    for index, slot in enumerate(slots):
        bank = f"bank:{index}"
        size = _dmi_bytes(slot.get("Size"))
        _add(facts, "memory", bank, "slot", _known(slot.get("Locator")))
        if size is None:
            facts.append(["memory", bank, "description", "[empty]"])
            continue
        installed += size
        speed = re.match(r"(\d+)", slot.get("Configured Memory Speed") or slot.get("Speed") or "")
        mhz = int(speed.group(1)) if speed else None
        words = [_known(slot.get(k)) for k in ("Form Factor", "Type", "Type Detail")]
        description = " ".join(w for w in words if w)
        _add(facts, "memory", bank, "size", size)
        _add(facts, "memory", bank, "clock", mhz * 10 ** 6 if mhz else None)
        _add(facts, "memory", bank, "description",
             f"{description} {mhz} MHz".strip() if mhz else description)
        _add(facts, "memory", bank, "vendor", _known(slot.get("Manufacturer")))
        _add(facts, "memory", bank, "product", _known(slot.get("Part Number")))
        _add(facts, "memory", bank, "serial", _known(slot.get("Serial Number")))
    if slots:
        facts.append(["memory", "banks", "count", len(slots)])
    total = installed
    if not total:
        physical = memory.collect(root).get("physical_mb")
        total = physical * memory.MIB if physical else memory.mem_total(root)
    return [["memory", "total", "size", total], *facts]


# ------------------------------------------------------------------ disks

def _by_id(root: str) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    base = sysfs.path(root, "/dev/disk/by-id")
    for entry in sysfs.listdir(base):
        target = sysfs.realpath(os.path.join(base, entry))
        if target:
            names.setdefault(os.path.basename(target), []).append(entry)
    return names


def disk_facts(root: str, disks: Iterable[Disk]) -> list[Fact]:
    disks = [d for d in disks if d.size > 0]
    facts: list[Fact] = [["disk", "logical", "count", len(disks)]]
    by_id = _by_id(root)
    for disk in disks:
        name = disk.kname or os.path.basename(disk.name)
        block = sysfs.path(root, "/sys/block", name)

        def attr(*rels: str, block: str = block) -> str | None:
            for rel in rels:
                value = sysfs.read_str(os.path.join(block, rel))
                if value is not None:
                    return value
            return None
        _add(facts, "disk", name, "size", disk.size // 10 ** 9)
        _add(facts, "disk", name, "vendor", disk.vendor)
        _add(facts, "disk", name, "model", disk.model)
        _add(facts, "disk", name, "rev", attr("device/rev", "device/revision",
                                              "device/firmware_rev"))
        _add(facts, "disk", name, "serial", disk.serial)
        facts.append(["disk", name, "rotational", int(disk.rotational)])
        for key in ("optimal_io_size", "physical_block_size", "nr_requests"):
            value = attr(f"queue/{key}")
            _add(facts, "disk", name, key, int(value) if value and value.isdigit() else None)
        scheduler = re.search(r"\[(.*?)\]", attr("queue/scheduler") or "")
        _add(facts, "disk", name, "scheduler", scheduler.group(1) if scheduler else None)
        cache = _cache_type(block)
        if cache is not None:
            facts.append(["disk", name, "Write Cache Enable", int(cache[0])])
            facts.append(["disk", name, "Read Cache Disable", int(cache[1])])
        for entry in by_id.get(name, []):
            kind = "wwn-id" if entry.startswith("wwn") else \
                "scsi-id" if entry.startswith("scsi") else "id"
            facts.append(["disk", name, kind, entry])
    return facts


def _cache_type(block: str) -> tuple[bool, bool] | None:
    """(WCE, RCD) from the SCSI disk's cache_type: "write back", "write through",
    "none" or "write back, no read (daft)" (the kernel's sd-parameters)."""
    base = os.path.join(block, "device", "scsi_disk")
    for entry in sysfs.listdir(base):
        text = sysfs.read_str(os.path.join(base, entry, "cache_type"))
        if text:
            return text.startswith("write back"), text == "none" or "daft" in text
    return None


# ------------------------------------------------------------------ network

def _speed_text(mbps: int) -> str:
    return f"{mbps}Mbit/s" if mbps < 1000 else f"{mbps / 1000:g}Gbit/s"


def network_facts(root: str) -> list[Fact]:
    facts: list[Fact] = []
    net = sysfs.path(root, "/sys/class/net")
    for name in sysfs.listdir(net):
        base = os.path.join(net, name)
        if not os.path.isdir(os.path.join(base, "device")):
            continue                   # lo, bridges, bonds, tunnels: lshw lists none of them
        _add(facts, "network", name, "serial", (sysfs.read_str(os.path.join(base, "address"))
                                                 or "").lower())
        pci = devices.pci_address_of(os.path.join(base, "device"))
        _add(facts, "network", name, "businfo", f"pci@{pci}" if pci else None)
        _add(facts, "network", name, "driver",
             sysfs.link_name(os.path.join(base, "device", "driver")))
        carrier = sysfs.read_int(os.path.join(base, "carrier"))
        _add(facts, "network", name, "link", "yes" if carrier == 1 else "no")
        speed = sysfs.read_int(os.path.join(base, "speed"))
        if speed and speed > 0:
            facts.append(["network", name, "size", speed * 10 ** 6])
            facts.append(["network", name, "speed", _speed_text(speed)])
        duplex = sysfs.read_str(os.path.join(base, "duplex"))
        _add(facts, "network", name, "duplex", duplex if duplex in ("full", "half") else None)
    return facts


# ------------------------------------------------------------------ the collector

def _part(name: str, reader: Callable[[], list[Fact]]) -> list[Fact]:
    try:
        return reader()
    except Exception as exc:  # noqa: BLE001 - one unreadable area leaves the others
        LOG.warning("extra-hardware: %s facts not collected: %s: %s",
                    name, type(exc).__name__, exc)
        return []


def collect(root: str = "/", *, config: Config | None = None,
            disks: Callable[[], Iterable[Disk]] | None = None,
            dmi_tables: dict[str, Any] | None = None, arch: str | None = None) -> list[Fact]:
    """Every fact of the module docstring's table, read below ``root``.

    ``config`` given: load the IPMI drivers first where it says ramdisk.
    ``disks`` lists the disks (default: agent.hardware.disks under ``root``).
    """
    arch = arch or platform.machine()
    lister = disks or (lambda: list_disks(root))
    return [
        *_part("system", lambda: system_facts(root, dmi_tables, arch)),
        *_part("ipmi", lambda: ipmi_facts(root, config)),
        *_part("cpu", lambda: cpu_facts(root, arch)),
        *_part("numa", lambda: numa_facts(root)),
        *_part("memory", lambda: memory_facts(root, dmi_tables)),
        *_part("disk", lambda: disk_facts(root, lister())),
        *_part("network", lambda: network_facts(root)),
    ]


def collect_extra_hardware(state: AgentState, data: dict[str, Any]) -> None:
    # the dmi-decode collector may have run already; dmidecode once is enough
    tables = data.get("dmi")
    if tables is None:
        try:
            tables = devices.dmi_info()
        except Exception as exc:  # noqa: BLE001 - DIMM facts are optional here
            LOG.warning("extra-hardware: no dmidecode tables: %s", exc)
    data["data"] = collect(config=state.config, disks=lambda: managers.list_disks(state),
                           dmi_tables=tables)
