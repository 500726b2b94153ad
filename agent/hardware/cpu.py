"""The ``cpu`` inventory object from /proc/cpuinfo and /sys/devices/system/cpu.

x86 names the model in ``model name`` and its features in ``flags``; arm64
uses ``Features``; POWER puts the model in ``cpu`` and the clock in
``clock``.  Frequency prefers cpufreq's maximum, as lscpu's "CPU max MHz".
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from agent.disk import sysfs


def _blocks(text: str) -> list[dict[str, str]]:
    """cpuinfo as one dict per blank-line separated block."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1].setdefault(key.strip().lower(), value.strip())
    return [b for b in blocks if b]


def _parse_ranges(text: str | None) -> list[int]:
    """'0-3,8,10-11' → [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


# arm64 cpuinfo names no model, only the MIDR fields; these are the server and
# virtual-machine cores a deploy meets (implementer -> (vendor, part -> core))
ARM_PARTS: dict[int, tuple[str, dict[int, str]]] = {
    0x41: ("ARM", {0xd03: "Cortex-A53", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72",
                   0xd09: "Cortex-A73", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1",
                   0xd40: "Neoverse-V1", 0xd49: "Neoverse-N2", 0xd4f: "Neoverse-V2",
                   0xd8e: "Neoverse-N3", 0xd84: "Neoverse-V3", 0xd0f: "AEMv8 (emulated)"}),
    0x43: ("Cavium", {0x0a1: "ThunderX", 0x0af: "ThunderX2"}),
    0x46: ("Fujitsu", {0x001: "A64FX"}),
    0x48: ("HiSilicon", {0xd01: "Kunpeng-920"}),
    0x50: ("APM", {0x000: "X-Gene"}),
    0x51: ("Qualcomm", {0xc00: "Falkor"}),
    0xc0: ("Ampere", {0xac3: "Ampere-1", 0xac4: "Ampere-1a"}),
}


def _arm_model(fields: dict[str, str]) -> str:
    """'ARM Neoverse-N1' from "CPU implementer"/"CPU part"; '' when they are absent."""
    try:
        implementer = int(fields["cpu implementer"], 16)
        part = int(fields["cpu part"], 16)
    except (KeyError, ValueError):
        return ""
    vendor, parts = ARM_PARTS.get(implementer, (f"implementer {implementer:#04x}", {}))
    return f"{vendor} {parts.get(part, f'part {part:#05x}')}"


def _mhz(text: str | None) -> float | None:
    match = re.search(r"[\d.]+", text or "")
    return float(match.group()) if match else None


def collect(root: str = "/", arch: str | None = None) -> dict[str, Any]:
    info = sysfs.read_str(sysfs.path(root, "/proc/cpuinfo"))
    if info is None:
        raise OSError("/proc/cpuinfo is not readable")
    blocks = _blocks(info)
    procs = [b for b in blocks if "processor" in b] or blocks
    first = procs[0] if procs else {}
    # POWER and arm64 put machine-wide keys in a trailing block without "processor"
    merged = {k: v for b in reversed(blocks) for k, v in b.items()} | first

    model = (merged.get("model name") or merged.get("cpu")
             or merged.get("hardware") or merged.get("processor", ""))
    if model.isdigit():  # arm64 "processor : 0" without a model line
        model = _arm_model(merged)
    cpu_dir = sysfs.path(root, "/sys/devices/system/cpu")
    online = _parse_ranges(sysfs.read_str(os.path.join(cpu_dir, "online")))
    count = len(online) or len(procs) or (os.cpu_count() or 0)

    max_khz = sysfs.read_int(os.path.join(cpu_dir, "cpu0", "cpufreq", "cpuinfo_max_freq"))
    mhz = max_khz / 1000 if max_khz else _mhz(merged.get("cpu mhz") or merged.get("clock"))

    flags_text = merged.get("flags") or merged.get("features") or ""
    packages = {sysfs.read_str(os.path.join(cpu_dir, f"cpu{n}", "topology",
                                            "physical_package_id")) for n in online}
    packages.discard(None)
    packages.discard("-1")
    return {
        "model_name": model or None,
        "frequency": f"{mhz:.4f}" if mhz else None,
        "count": count,
        "architecture": arch or platform.machine(),
        "flags": flags_text.split(),
        "socket_count": len(packages) or None,
    }
