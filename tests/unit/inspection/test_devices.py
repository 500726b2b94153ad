"""pci-devices, numa-topology, dmi-decode and usb-devices collectors on captured trees.

vm_sysfs is copied from the /sys of the VM these tests were written on (six
virtio PCI functions, one NUMA node, eth0 on virtio); the dmidecode text and
the USB tree are crafted in the format of a two-socket server (the VM has
neither SMBIOS nor USB).
"""

from __future__ import annotations

import json
import os

import pytest

from agent import tools
from agent.inspection import devices
from tests.unit.hardware.fake_sysfs import write
from tests.unit.hardware.tool_fakes import FIXTURES, FakeTools, fixture
from tests.unit.inspection.ironic_hooks import run_hooks

VM = os.path.join(FIXTURES, "vm_sysfs")
DMI_ARGS = ("dmidecode", "-t", "bios", "-t", "system", "-t", "processor", "-t", "memory")


# ------------------------------------------------------------------ PCI

def test_pci_devices_from_the_captured_tree():
    assert devices.pci_devices(VM) == [
        {"vendor_id": "8086", "product_id": "0d57", "class": "060000", "revision": "00",
         "bus": "0000:00:00.0"},
        {"vendor_id": "1af4", "product_id": "1045", "class": "ffff00", "revision": "01",
         "bus": "0000:00:01.0"},
        {"vendor_id": "1af4", "product_id": "1042", "class": "018000", "revision": "01",
         "bus": "0000:00:02.0"},
        {"vendor_id": "1af4", "product_id": "1041", "class": "020000", "revision": "01",
         "bus": "0000:00:03.0"},
        {"vendor_id": "1af4", "product_id": "1053", "class": "ffff00", "revision": "01",
         "bus": "0000:00:04.0"},
        {"vendor_id": "1af4", "product_id": "1044", "class": "ffff00", "revision": "01",
         "bus": "0000:00:05.0"},
    ]


def test_pci_device_without_revision_or_class(tmp_path):
    base = tmp_path / "sys/bus/pci/devices"
    for name, value in (("vendor", "0x10DE"), ("device", "0x1eb8"), ("class", "0x030200")):
        write(base / "0000:3b:00.0" / name, value + "\n")
    write(base / "0000:5e:00.0/vendor", "0x8086\n")     # half-gone device: skipped
    assert devices.pci_devices(str(tmp_path)) == [
        {"vendor_id": "10de", "product_id": "1eb8", "class": "030200", "revision": None,
         "bus": "0000:3b:00.0"}]


def test_ironic_pci_and_accelerator_hooks_read_our_keys(tmp_path):
    base = tmp_path / "sys/bus/pci/devices/0000:3b:00.0"
    for name, value in (("vendor", "0x10de"), ("device", "0x1eb8"), ("class", "0x030200"),
                        ("revision", "0xa1")):
        write(base / name, value + "\n")
    found = devices.pci_devices(str(tmp_path)) + devices.pci_devices(VM)
    alias = json.dumps({"vendor_id": "1af4", "product_id": "1041", "name": "virtio_net"})
    out = run_hooks({"pci_devices": found}, pci_device_alias=[alias])
    assert out["properties"]["capabilities"] == "virtio_net:1"
    assert out["properties"]["accelerators"] == [
        {"vendor_id": "10de", "device_id": "1eb8", "type": "GPU",
         "device_info": "NVIDIA Corporation Tesla T4", "pci_address": "0000:3b:00.0"}]


# ------------------------------------------------------------------ NUMA

def test_numa_topology_from_the_captured_tree():
    topology = devices.numa_topology(VM)
    assert topology == {
        "ram": [{"numa_node": 0, "size_kb": topology["ram"][0]["size_kb"]}],
        "cpus": [{"cpu": 0, "numa_node": 0, "thread_siblings": [0]},
                 {"cpu": 1, "numa_node": 0, "thread_siblings": [1]}],
        # virtio-net's device has no numa_node; its PCI function says -1 (no affinity)
        "nics": [{"name": "eth0", "numa_node": -1}],
    }
    with open(os.path.join(VM, "sys/devices/system/node/node0/meminfo")) as f:
        assert f"MemTotal:        {topology['ram'][0]['size_kb']} kB" in f.read()


def two_socket_tree(root):
    """node0: cores 0,1 with threads 0+4, 1+5; node1: cores 0,1 with threads 2+6, 3+7."""
    layout = {0: [(0, 0), (1, 1), (4, 0), (5, 1)], 1: [(2, 0), (3, 1), (6, 0), (7, 1)]}
    for node, cpus in layout.items():
        nd = root / f"sys/devices/system/node/node{node}"
        write(nd / "meminfo", f"Node {node} MemTotal:       {65536 * (node + 1)} kB\n"
                              f"Node {node} MemFree:        1024 kB\n")
        write(nd / "cpulist", ",".join(str(c) for c, _ in cpus) + "\n")
        for cpu, core in cpus:
            topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
            write(topo / "core_id", f"{core}\n")
            write(topo / "physical_package_id", f"{node}\n")
            os.symlink(f"../../cpu/cpu{cpu}", nd / f"cpu{cpu}")
    write(root / "sys/devices/system/node/possible", "0-1\n")
    write(root / "sys/devices/system/cpu/online", "0-7\n")
    pci = root / "sys/devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0"
    write(pci / "numa_node", "1\n")
    write(pci / "net/ens5f0/address", "3c:fd:fe:aa:bb:cc\n")
    os.symlink("../../../0000:d8:00.0", pci / "net/ens5f0/device")
    (root / "sys/class/net").mkdir(parents=True)
    os.symlink("../../devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/net/ens5f0",
               root / "sys/class/net/ens5f0")
    write(root / "sys/devices/virtual/net/lo/address", "00:00:00:00:00:00\n")
    os.symlink("../../devices/virtual/net/lo", root / "sys/class/net/lo")
    return root


def test_numa_groups_threads_by_core_within_each_node(tmp_path):
    topology = devices.numa_topology(str(two_socket_tree(tmp_path)))
    assert topology == {
        "ram": [{"numa_node": 0, "size_kb": 65536}, {"numa_node": 1, "size_kb": 131072}],
        "cpus": [{"cpu": 0, "numa_node": 0, "thread_siblings": [0, 4]},
                 {"cpu": 1, "numa_node": 0, "thread_siblings": [1, 5]},
                 {"cpu": 0, "numa_node": 1, "thread_siblings": [2, 6]},
                 {"cpu": 1, "numa_node": 1, "thread_siblings": [3, 7]}],
        "nics": [{"name": "ens5f0", "numa_node": 1}],
    }


def test_no_numa_tree_means_no_key(tmp_path, monkeypatch):
    assert devices.numa_topology(str(tmp_path)) is None
    monkeypatch.setattr(devices, "numa_topology", lambda root="/": None)
    data: dict = {}
    devices.collect_numa_topology(None, data)
    assert data == {}


# ------------------------------------------------------------------ dmidecode

def test_parse_dmidecode_in_ipa_shape():
    dmi = devices.parse_dmidecode(fixture("dmidecode_supermicro_x11dpi.txt"))
    assert set(dmi) == {"bios", "system", "cpu", "memory"}
    assert dmi["bios"]["Vendor"] == "American Megatrends Inc."
    assert dmi["bios"]["Handle"] == "Handle 0x0000, DMI type 0, 26 bytes"
    assert dmi["bios"]["Characteristics"][0] == "PCI is supported"
    assert len(dmi["bios"]["Characteristics"]) == 12
    assert dmi["bios"]["BIOS Revision"] == "5.14"
    assert dmi["system"]["Product Name"] == "SYS-6029P-TRT"
    assert dmi["system"]["UUID"] == "00000000-0000-0000-0000-ac1f6b7a8e52"
    assert [c["Socket Designation"] for c in dmi["cpu"]] == ["CPU1", "CPU2"]
    assert dmi["cpu"][0]["Core Count"] == "16" and dmi["cpu"][0]["Thread Count"] == "32"
    assert dmi["cpu"][0]["Flags"][-1] == "PBE (Pending break enabled)"
    assert dmi["cpu"][0]["Signature"] == "Type 0, Family 6, Model 85, Stepping 4"
    memory = dmi["memory"]
    # two type-16 arrays of two slots each: the first array's fields, the counts summed
    assert memory["Number Of Devices"] == 4
    assert memory["Maximum Capacity"] == "2 TB" and "Handle" not in memory
    assert [d["Locator"] for d in memory["devices"]] == [
        "P1-DIMMA1", "P1-DIMMA2", "P2-DIMMA1", "P2-DIMMA2"]
    assert memory["devices"][1]["Size"] == "No Module Installed"
    assert memory["devices"][0]["Part Number"] == "HMA84GR7AFR4N-VK"
    json.dumps(dmi)


def test_dmidecode_runs_only_with_smbios(tmp_path, monkeypatch):
    fake = FakeTools({DMI_ARGS: fixture("dmidecode_supermicro_x11dpi.txt")})
    monkeypatch.setattr(tools, "run", fake)
    monkeypatch.setattr(tools, "tools_for_this_machine", lambda: ["dmidecode"])
    assert devices.dmi_info(str(tmp_path)) is None
    assert fake.calls == []
    write(tmp_path / "sys/firmware/dmi/tables/DMI", b"\x00")
    assert devices.dmi_info(str(tmp_path))["system"]["Manufacturer"] == "Supermicro"
    assert fake.calls == [DMI_ARGS]


def test_dmidecode_not_run_where_the_ramdisk_has_none(monkeypatch):
    fake = FakeTools()
    monkeypatch.setattr(tools, "run", fake)
    monkeypatch.setattr(tools, "tools_for_this_machine", lambda: ["ipmitool"])  # POWER
    data: dict = {}
    devices.collect_dmi_decode(None, data)
    assert data == {} and fake.calls == []


# ------------------------------------------------------------------ USB

def usb_tree(root):
    """A server's xHCI root hub, the BMC's virtual hub + keyboard, one stringless device."""
    base = root / "sys/bus/usb/devices"
    entries = {
        "usb1": {"busnum": "1", "devnum": "1", "idVendor": "1d6b", "idProduct": "0002",
                 "manufacturer": "Linux 6.1.0-28-amd64 xhci-hcd",
                 "product": "xHCI Host Controller"},
        "1-0:1.0": {"bInterfaceClass": "09"},
        "1-14": {"busnum": "1", "devnum": "2", "idVendor": "046b", "idProduct": "ff01",
                 "manufacturer": "American Megatrends Inc.", "product": "Virtual Hub"},
        "1-14.1": {"busnum": "1", "devnum": "3", "idVendor": "046b", "idProduct": "ff10",
                   "manufacturer": "American Megatrends Inc.",
                   "product": "Virtual Keyboard and Mouse"},
        "1-14.1:1.0": {"bInterfaceClass": "03"},
        "2-3": {"busnum": "2", "devnum": "4", "idVendor": "0781", "idProduct": "5581"},
    }
    for name, attrs in entries.items():
        for attr, value in attrs.items():
            write(base / name / attr, value + "\n")
    return root


def test_usb_devices_skip_interfaces_and_fall_back_to_ids(tmp_path):
    assert devices.usb_devices(str(usb_tree(tmp_path))) == [
        {"product": "xHCI Host Controller", "vendor": "Linux 6.1.0-28-amd64 xhci-hcd",
         "handle": "USB:1:1"},
        {"product": "Virtual Hub", "vendor": "American Megatrends Inc.", "handle": "USB:1:2"},
        {"product": "Virtual Keyboard and Mouse", "vendor": "American Megatrends Inc.",
         "handle": "USB:1:3"},
        {"product": "5581", "vendor": "0781", "handle": "USB:2:4"},
    ]


def test_no_usb_bus_is_an_empty_list(tmp_path):
    assert devices.usb_devices(str(tmp_path)) == []


@pytest.mark.parametrize("collector,key", [
    (devices.collect_pci_devices, "pci_devices"), (devices.collect_usb_devices, "usb_devices")])
def test_collectors_add_only_their_key(collector, key):
    data = {"inventory": {}}
    collector(None, data)
    assert set(data) == {"inventory", key} and isinstance(data[key], list)
