"""ipa-collect-lldp reaches interfaces[].lldp and the inspection's lldp_raw, one capture each.

The NICs come from a sysfs-shaped tree and ``lldp.capture`` is replaced: the
capture itself is exercised on real veths in tests/functional/hardware.
"""

from __future__ import annotations

import types

from agent import config as agent_config
from agent.hardware import inventory, lldp, managers
from agent.inspection import default
from agent.state import AgentState
from tests.unit.hardware.fake_sysfs import write
from tests.unit.hardware.lldp_frames import SWITCH_TLVS
from tests.unit.hardware.test_interfaces import nic


def _tree(root):
    nic(root, "eno1", address="0c:c4:7a:12:34:56", pci="0000:18:00.0")
    nic(root, "eno2", address="0c:c4:7a:12:34:57", pci="0000:18:00.1")
    nic(root, "eno3", address="0c:c4:7a:12:34:58", pci="0000:18:00.2")
    nic(root, "br0", address="0c:c4:7a:12:34:56")                 # virtual: not listed
    for name, flags in (("eno1", "0x1003"), ("eno2", "0x1003"), ("eno3", "0x1002"),
                        ("br0", "0x1003")):
        write(root / "sys/class/net" / name / "flags", flags + "\n")
    write(root / "proc/meminfo", "MemTotal:       1024 kB\n")


class FakeCapture:
    def __init__(self, heard):
        self.heard = heard
        self.calls = []

    def __call__(self, names, timeout):
        self.calls.append((list(names), timeout))
        return {n: t for n, t in self.heard.items() if n in names}


def _config(**kw):
    values = dict(include_loop_devices=False, bootif=None, skip_bmc_detect=True,
                  collect_lldp=False, lldp_timeout=30.0)
    values.update(kw)
    return types.SimpleNamespace(**values)


def test_inventory_fills_lldp_for_up_physical_nics(tmp_path, monkeypatch):
    _tree(tmp_path)
    capture = FakeCapture({"eno1": SWITCH_TLVS, "eno3": [[1, "00"]]})
    monkeypatch.setattr(lldp, "capture", capture)
    inv = inventory.collect(_config(collect_lldp=True, lldp_timeout=4.5),
                            root=str(tmp_path), live=False, disk_lister=list)
    # one capture, over the up physical NICs only, with the configured timeout
    assert capture.calls == [(["eno1", "eno2"], 4.5)]
    by_name = {i["name"]: i["lldp"] for i in inv["interfaces"]}
    assert by_name == {"eno1": SWITCH_TLVS, "eno2": None, "eno3": None}


def test_inventory_does_not_listen_without_the_setting(tmp_path, monkeypatch):
    _tree(tmp_path)
    capture = FakeCapture({"eno1": SWITCH_TLVS})
    monkeypatch.setattr(lldp, "capture", capture)
    inv = inventory.collect(_config(), root=str(tmp_path), live=False, disk_lister=list)
    assert capture.calls == []
    assert [i["lldp"] for i in inv["interfaces"]] == [None, None, None]


def _inspect(tmp_path, monkeypatch, collect_lldp):
    _tree(tmp_path)
    capture = FakeCapture({"eno2": SWITCH_TLVS})
    monkeypatch.setattr(lldp, "capture", capture)
    conf = agent_config.load(read_proc=False, env={})
    conf.set("collect_lldp", collect_lldp)
    conf.set("lldp_timeout", 2)
    state = AgentState(conf)

    def dispatch(st, method):
        assert method == "list_hardware_info"
        return inventory.collect(st.config, root=str(tmp_path), live=False, disk_lister=list)
    monkeypatch.setattr(managers, "dispatch", dispatch)
    monkeypatch.setattr(managers, "list_disks", lambda st: [])
    monkeypatch.setattr(managers, "versions", lambda st: {})
    data: dict = {}
    default.collect_default(state, data)
    return data, capture


def test_inspection_lldp_raw_reuses_the_inventory_capture(tmp_path, monkeypatch):
    data, capture = _inspect(tmp_path, monkeypatch, True)
    assert len(capture.calls) == 1                     # listened once, not twice
    assert capture.calls[0][1] == 2.0
    assert data["lldp_raw"] == {"eno2": SWITCH_TLVS}
    eno2 = [i for i in data["inventory"]["interfaces"] if i["name"] == "eno2"][0]
    assert eno2["lldp"] == SWITCH_TLVS


def test_inspection_without_lldp_has_no_lldp_raw(tmp_path, monkeypatch):
    data, capture = _inspect(tmp_path, monkeypatch, False)
    assert capture.calls == []
    assert "lldp_raw" not in data
