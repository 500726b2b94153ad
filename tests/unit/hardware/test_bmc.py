"""BMC detection: ipmitool only with an IPMI device node, fed captured output."""

from __future__ import annotations

import pytest

from agent import tools
from agent.hardware import bmc
from tests.unit.hardware.fake_sysfs import write
from tests.unit.hardware.tool_fakes import FakeTools, fixture


@pytest.fixture
def ipmi_root(tmp_path):
    write(tmp_path / "dev/ipmi0", "")
    return str(tmp_path)


def test_no_device_node_means_null_and_no_ipmitool(tmp_path, monkeypatch):
    fake = FakeTools()
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.collect(str(tmp_path)) == {"bmc_address": None, "bmc_v6address": None}
    assert fake.calls == []


def test_skip_flag_never_probes(ipmi_root, monkeypatch):
    fake = FakeTools()
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.collect(ipmi_root, skip=True) == {"bmc_address": None, "bmc_v6address": None}
    assert fake.calls == []


def test_first_channel_with_an_address_wins(ipmi_root, monkeypatch):
    fake = FakeTools({
        ("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_unset.txt"),
        ("ipmitool", "lan", "print", "2"): fixture("ipmitool_lan_print_1.txt"),
        ("ipmitool", "lan6", "print", "1", "dynamic_addr"):
            fixture("ipmitool_lan6_dynamic_addr.txt"),
    })
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.collect(ipmi_root) == {"bmc_address": "10.10.0.12",
                                      "bmc_mac": "d0:94:66:aa:bb:cc",
                                      "bmc_v6address": "2001:db8:10::12"}
    assert ("ipmitool", "lan", "print", "3") not in fake.calls


def test_unset_bmc_reports_zero_addresses_and_no_mac(ipmi_root, monkeypatch):
    fake = FakeTools({
        ("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_unset.txt"),
        ("ipmitool", "lan6", "print", "1", "static_addr"):
            fixture("ipmitool_lan6_static_addr.txt"),
    })
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.collect(ipmi_root) == {"bmc_address": "0.0.0.0", "bmc_v6address": "::/0"}
    assert len([c for c in fake.calls if c[1] == "lan"]) == 11   # channels 1..11 tried


def test_parse_lan_print_ignores_continuation_lines():
    fields = bmc.parse_lan_print(fixture("ipmitool_lan_print_1.txt"))
    assert fields["IP Address Source"] == "Static Address"
    assert fields["Auth Type Enable"] == "Callback : MD2 MD5 PASSWORD"
    assert fields["Default Gateway IP"] == "10.10.0.1"


def test_parse_lan6_keeps_only_active_addresses():
    assert bmc.parse_lan6_addresses(fixture("ipmitool_lan6_dynamic_addr.txt")) == [
        "2001:db8:10::12/64"]
    assert bmc.parse_lan6_addresses(fixture("ipmitool_lan6_static_addr.txt")) == []
