"""ipa-enable-vlan-interfaces: entry parsing, VLANs from LLDP TLVs, and the ip calls."""

from __future__ import annotations

import types

import pytest

from agent import tools
from agent.hardware import lldp, vlan
from agent.hardware.vlan import VlanEntry
from tests.unit.hardware.fake_sysfs import write
from tests.unit.hardware.lldp_frames import SWITCH_TLVS, frame, mandatory, tlv
from tests.unit.hardware.tool_fakes import FakeTools


@pytest.mark.parametrize("text, expected", [
    ("eth0.100", VlanEntry("eth0", 100)),
    (" eth0.4094 ", VlanEntry("eth0", 4094)),
    ("eth0.1", VlanEntry("eth0", 1)),
    ("eno1", VlanEntry("eno1", None)),
    ("bond0.5.10", VlanEntry("bond0.5", 10)),     # the VID is after the last dot
    ("all", VlanEntry(None, None)),
    ("ALL", VlanEntry(None, None)),
])
def test_parse_entry(text, expected):
    assert vlan.parse_entry(text) == expected


@pytest.mark.parametrize("text", ["eth0.0", "eth0.4095", "eth0.x", "eth0.", ".100", "",
                                  "a" * 16, "a/b.3", "eth0.-1"])
def test_parse_entry_refuses(text):
    with pytest.raises(ValueError):
        vlan.parse_entry(text)


def test_parse_entries_logs_bad_ones_and_drops_repeats(caplog):
    got = vlan.parse_entries(["eth0.7", "eth0.9999", "eth1", "eth0.7", "all"])
    assert got == [VlanEntry("eth0", 7), VlanEntry("eth1", None), VlanEntry(None, None)]
    assert "'eth0.9999': VLAN ID 9999 is outside 1-4094" in caplog.text


def test_vlans_from_the_switch_frame():
    # port VLAN ID 100 and VLAN name 200; the 802.1 PPVID and 802.3 TLVs are not VLANs
    assert vlan.vlans_from_tlvs(SWITCH_TLVS) == [100, 200]


def test_vlans_from_several_names_and_no_pvid():
    names = [tlv(127, bytes.fromhex("0080c203") + vid.to_bytes(2, "big") +
                 bytes([len(name)]) + name) for vid, name in ((30, b"mgmt"), (10, b"prov"))]
    tlvs = lldp.parse_frame(frame(*mandatory(), tlv(127, bytes.fromhex("0080c2010000")),
                                  *names))
    assert vlan.vlans_from_tlvs(tlvs) == [10, 30]     # PVID 0 means "none"
    assert vlan.vlans_from_tlvs([[127, "zz"], [127, "0080c2"], ["x"]]) == []


def test_plan_orders_by_entry_and_repeats_nothing():
    heard = {"eno1": SWITCH_TLVS,
             "eno2": [[127, "0080c2010005"]]}
    entries = vlan.parse_entries(["eno3.7", "eno1", "all", "eno9"])
    assert vlan.plan(entries, heard) == [("eno3", 7), ("eno1", 100), ("eno1", 200),
                                         ("eno2", 5)]
    assert vlan.plan(entries, None) == [("eno3", 7)]


def _config(*entries, timeout=3.0):
    return types.SimpleNamespace(enable_vlan_interfaces=list(entries), lldp_timeout=timeout)


def _net(root, *names, up=True):
    for name in names:
        write(root / "sys/class/net" / name / "flags", "0x1003\n" if up else "0x1002\n")


def test_create_runs_ip_and_skips_existing(tmp_path, monkeypatch):
    _net(tmp_path, "eno1", "eno1.200")
    _net(tmp_path, "eno2", up=False)
    fake = FakeTools({
        ("ip", "link", "add", "link", "eno1", "name", "eno1.100", "type", "vlan", "id", "100"): "",
        ("ip", "link", "add", "link", "eno2", "name", "eno2.7", "type", "vlan", "id", "7"): "",
        ("ip", "link", "set", "dev", "eno1.100", "up"): "",
        ("ip", "link", "set", "dev", "eno1.200", "up"): "",
        ("ip", "link", "set", "dev", "eno2", "up"): "",
        ("ip", "link", "set", "dev", "eno2.7", "up"): "",
    })
    monkeypatch.setattr(tools, "run", fake)
    made = vlan.create_vlan_interfaces(_config("eno1", "eno2.7", "eno5.3"),
                                       {"eno1": SWITCH_TLVS}, root=str(tmp_path))
    assert made == ["eno1.100", "eno1.200", "eno2.7"]
    adds = [c for c in fake.calls if c[:3] == ("ip", "link", "add")]
    assert [c[6] for c in adds] == ["eno1.100", "eno2.7"]     # eno1.200 already existed
    assert ("ip", "link", "set", "dev", "eno2", "up") in fake.calls   # parent was down
    assert ("ip", "link", "set", "dev", "eno1", "up") not in fake.calls


def test_create_failure_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    _net(tmp_path, "eno1")
    monkeypatch.setattr(tools, "run", FakeTools({}))          # every ip call fails
    assert vlan.create_vlan_interfaces(_config("eno1.10", "verylongname1.4000"),
                                       {}, root=str(tmp_path)) == []
    assert "VLAN interface eno1.10 could not be set up" in caplog.text
    assert "name longer than 15 characters" in caplog.text


def test_lldp_capture_only_when_an_entry_needs_it(tmp_path, monkeypatch):
    _net(tmp_path, "eno1")
    _net(tmp_path, "eno2", up=False)
    calls = []

    def fake_capture(names, timeout):
        calls.append((list(names), timeout))
        return {"eno1": [[127, "0080c2010033"]]}
    monkeypatch.setattr(lldp, "capture", fake_capture)
    monkeypatch.setattr(tools, "run", FakeTools({
        ("ip", "link", "add", "link", "eno1", "name", "eno1.51", "type", "vlan", "id", "51"): "",
        ("ip", "link", "set", "dev", "eno1.51", "up"): "",
        ("ip", "link", "add", "link", "eno1", "name", "eno1.4", "type", "vlan", "id", "4"): "",
        ("ip", "link", "set", "dev", "eno1.4", "up"): ""}))
    assert vlan.create_vlan_interfaces(_config("eno1.4"), None, root=str(tmp_path)) == ["eno1.4"]
    assert calls == []
    assert vlan.create_vlan_interfaces(_config("eno1", "eno2", timeout=7.0), None,
                                       root=str(tmp_path)) == ["eno1.51"]
    assert calls == [(["eno1"], 7.0)]          # eno2 is down: not listened on
