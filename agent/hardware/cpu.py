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
        model = ""
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
