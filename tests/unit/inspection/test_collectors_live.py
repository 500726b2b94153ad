"""Every registered collector through collectors.run on this machine's real /sys and /proc."""

from __future__ import annotations

import json

from agent import config
from agent.inspection import collectors, devices
from agent.state import AgentState

NAMES = ["default", "logs", "pci-devices", "numa-topology", "dmi-decode", "usb-devices",
         "extra-hardware"]


def test_all_collectors_on_the_live_machine():
    assert set(NAMES) <= set(collectors.available())
    state = AgentState(config.load(read_proc=False, env={}))
    data, failures = collectors.run(state, NAMES)
    assert failures == []
    for key in ("inventory", "logs", "pci_devices", "usb_devices", "data"):
        assert key in data, key
    # the kernel may lack NUMA or SMBIOS (this VM has no SMBIOS); the keys follow the machine
    assert ("numa_topology" in data) == (devices.numa_topology() is not None)
    assert ("dmi" in data) == (devices.dmi_info() is not None)
    assert data["pci_devices"] == devices.pci_devices()
    assert all(isinstance(f, list) and len(f) == 4 for f in data["data"])
    assert {f[0] for f in data["data"]} >= {"cpu", "memory", "disk", "system"}
    assert set(data["configuration"]["collector_seconds"]) == set(NAMES)
    json.loads(json.dumps(data))
