"""extra-hardware facts on captured and server-shaped trees, checked through Ironic's hook."""

from __future__ import annotations

import json
import os

import pytest

from agent import tools
from agent.hardware import bmc
from agent.hardware.disks import list_disks
from agent.inspection import devices, extra_hardware
from tests.unit.hardware.fake_sysfs import server_tree, write
from tests.unit.hardware.tool_fakes import FakeTools, fixture
from tests.unit.inspection.ironic_hooks import run_hooks
from tests.unit.inspection.test_devices import VM, two_socket_tree

GIB = 1024 ** 3


def facts_of(facts):
    """{(category, item, key): value}; a fact listed twice would be lost, so refuse it."""
    table = {tuple(f[:3]): f[3] for f in facts}
    assert len(table) == len(facts), "duplicate facts"
    return table


@pytest.fixture
def no_tools(monkeypatch):
    fake = FakeTools()
    monkeypatch.setattr(tools, "run", fake)
    return fake


def test_captured_vm_cpu_numa_and_network(no_tools):
    facts = extra_hardware.collect(VM, disks=list, arch="x86_64")
    assert all(isinstance(f, list) and len(f) == 4 for f in facts)
    got = facts_of(facts)
    assert got[("cpu", "physical", "number")] == 1
    assert got[("cpu", "physical", "smt")] == "notsupported"
    assert got[("cpu", "physical_0", "vendor")] == "AuthenticAMD"
    assert got[("cpu", "physical_0", "product")] == "AMD EPYC"
    assert got[("cpu", "physical_0", "cores")] == 2
    assert got[("cpu", "physical_0", "threads")] == 2
    assert got[("cpu", "physical_0", "threads_per_core")] == 1
    assert (got[("cpu", "physical_0", "family")], got[("cpu", "physical_0", "model")],
            got[("cpu", "physical_0", "stepping")]) == (25, 17, 1)
    assert "avx2" in got[("cpu", "physical_0", "flags")].split()
    assert isinstance(got[("cpu", "physical_0", "current_Mhz")], float)
    assert got[("cpu", "logical", "number")] == 2
    assert got[("numa", "nodes", "count")] == 1
    assert got[("numa", "node_0", "cpu_count")] == 2
    assert got[("numa", "node_0", "cpu_mask")] == "0x3"
    assert got[("network", "eth0", "serial")] == "02:fc:00:00:00:01"
    assert got[("network", "eth0", "businfo")] == "pci@0000:00:03.0"
    assert got[("network", "eth0", "driver")] == "virtio_net"
    assert got[("network", "eth0", "link")] == "yes"
    # virtio reports speed -1 and duplex "unknown": no size, speed or duplex facts
    assert not {("network", "eth0", k) for k in ("size", "speed", "duplex")} & set(got)
    assert not [f for f in facts if f[0] == "network" and f[1] in ("lo", "ifb0", "ifb1")]
    with open(os.path.join(VM, "proc/meminfo")) as f:
        mem_kb = int(f.readline().split()[1])
    assert got[("memory", "total", "size")] >= mem_kb * 1024   # hotplug blocks or MemTotal
    assert no_tools.calls == []                                # no IPMI device node


def test_two_sockets_with_hyperthreads(tmp_path, no_tools):
    root = two_socket_tree(tmp_path)
    info = "".join(f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                   f"model\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz\n"
                   f"stepping\t: 4\ncpu MHz\t\t: 2100.000\nphysical id\t: {n % 4 // 2}\n"
                   f"flags\t\t: fpu vme ht avx512f\n\n" for n in range(8))
    write(root / "proc/cpuinfo", info)
    write(root / "proc/meminfo", "MemTotal:       196608 kB\n")
    cpu = root / "sys/devices/system/cpu"
    write(cpu / "cpufreq/boost", "1\n")
    write(cpu / "cpu0/cpufreq/cpuinfo_max_freq", "3700000\n")
    write(cpu / "cpu0/cpufreq/cpuinfo_min_freq", "1000000\n")
    write(cpu / "cpu0/cpufreq/scaling_governor", "performance\n")
    write(root / "sys/devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/net/ens5f0/speed", "25000\n")
    write(root / "sys/devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/net/ens5f0/duplex", "full\n")
    write(root / "sys/devices/pci0000:d7/0000:d7:00.0/0000:d8:00.0/net/ens5f0/carrier", "0\n")
    got = facts_of(extra_hardware.collect(str(root), disks=list, arch="x86_64"))
    assert got[("cpu", "physical", "number")] == 2
    for tag in ("physical_0", "physical_1"):
        assert (got[("cpu", tag, "cores")], got[("cpu", tag, "threads")],
                got[("cpu", tag, "threads_per_core")]) == (2, 4, 2)
    assert got[("cpu", "physical_0", "boost")] == "enabled"
    assert got[("cpu", "physical_0", "max_Mhz")] == 3700.0
    assert got[("cpu", "physical_0", "min_Mhz")] == 1000.0
    assert got[("cpu", "physical_0", "current_Mhz")] == 2100.0
    assert got[("cpu", "logical", "number")] == 8
    assert got[("cpu", "logical_0", "governor")] == "performance"
    assert ("cpu", "logical_1", "governor") not in got
    assert got[("numa", "nodes", "count")] == 2
    assert got[("numa", "node_0", "cpu_mask")] == "0x33"    # cpus 0,1,4,5
    assert got[("numa", "node_1", "cpu_mask")] == "0xcc"    # cpus 2,3,6,7
    assert got[("network", "ens5f0", "size")] == 25 * 10 ** 9
    assert got[("network", "ens5f0", "speed")] == "25Gbit/s"
    assert got[("network", "ens5f0", "duplex")] == "full"
    assert got[("network", "ens5f0", "link")] == "no"
    assert ("network", "lo", "serial") not in got


def test_dimms_from_dmidecode():
    tables = devices.parse_dmidecode(fixture("dmidecode_supermicro_x11dpi.txt"))
    got = facts_of(extra_hardware.memory_facts("/nonexistent", tables))
    assert got[("memory", "total", "size")] == 3 * 32 * GIB
    assert got[("memory", "banks", "count")] == 4
    assert got[("memory", "bank:0", "size")] == 32 * GIB
    assert got[("memory", "bank:0", "clock")] == 2666 * 10 ** 6
    assert got[("memory", "bank:0", "description")] == \
        "DIMM DDR4 Synchronous Registered (Buffered) 2666 MHz"
    assert got[("memory", "bank:0", "vendor")] == "Hynix"
    assert got[("memory", "bank:0", "product")] == "HMA84GR7AFR4N-VK"
    assert got[("memory", "bank:0", "serial")] == "7218A1B2"
    assert got[("memory", "bank:0", "slot")] == "P1-DIMMA1"
    # the empty slot is listed, as lshw does, with its slot and no size or vendor
    assert got[("memory", "bank:1", "description")] == "[empty]"
    assert got[("memory", "bank:1", "slot")] == "P1-DIMMA2"
    assert not {("memory", "bank:1", k) for k in ("size", "vendor", "serial")} & set(got)
    assert got[("memory", "bank:3", "serial")] == "7218A1D4"


def test_system_identity_and_masked_cmdline(tmp_path, no_tools):
    ident = tmp_path / "sys/class/dmi/id"
    for name, value in {"product_name": "SYS-6029P-TRT", "sys_vendor": "Supermicro",
                        "product_serial": "S123456X9A12345", "product_version": "0123456789",
                        "product_uuid": "00000000-0000-0000-0000-AC1F6B7A8E52",
                        "board_name": "X11DPi-N", "board_vendor": "Supermicro",
                        "board_version": "1.10", "board_serial": "OM19AS012345",
                        "bios_vendor": "American Megatrends Inc.", "bios_version": "3.4",
                        "bios_date": "11/19/2020"}.items():
        write(ident / name, value + "\n")
    write(tmp_path / "proc/sys/kernel/osrelease", "6.1.0-28-amd64\n")
    write(tmp_path / "proc/cmdline", "BOOT_IMAGE=/vmlinuz ipa-api-url=http://10.0.0.1:6385 "
                                     "ipa-agent-token=s3cr3t ipa-debug=1\n")
    got = facts_of(extra_hardware.system_facts(str(tmp_path), None, "x86_64"))
    assert got == {
        ("system", "product", "name"): "SYS-6029P-TRT",
        ("system", "product", "vendor"): "Supermicro",
        ("system", "product", "version"): "0123456789",
        ("system", "product", "serial"): "S123456X9A12345",
        ("system", "product", "uuid"): "00000000-0000-0000-0000-ac1f6b7a8e52",
        ("system", "motherboard", "name"): "X11DPi-N",
        ("system", "motherboard", "vendor"): "Supermicro",
        ("system", "motherboard", "version"): "1.10",
        ("system", "motherboard", "serial"): "OM19AS012345",
        ("firmware", "bios", "vendor"): "American Megatrends Inc.",
        ("firmware", "bios", "version"): "3.4",
        ("firmware", "bios", "date"): "11/19/2020",
        ("system", "kernel", "version"): "6.1.0-28-amd64",
        ("system", "kernel", "arch"): "x86_64",
        ("system", "kernel", "cmdline"): "BOOT_IMAGE=/vmlinuz ipa-api-url=http://10.0.0.1:6385 "
                                         "ipa-agent-token=*** ipa-debug=1",
    }


def test_uuid_from_dmidecode_when_sysfs_hides_it(tmp_path):
    write(tmp_path / "sys/class/dmi/id/product_name", "SYS-6029P-TRT\n")
    tables = devices.parse_dmidecode(fixture("dmidecode_supermicro_x11dpi.txt"))
    got = facts_of(extra_hardware.system_facts(str(tmp_path), tables, "x86_64"))
    assert got[("system", "product", "uuid")] == "00000000-0000-0000-0000-ac1f6b7a8e52"


def test_disks(tmp_path, no_tools):
    server_tree(tmp_path)
    sda = tmp_path / "sys/devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0"
    write(sda / "rev", "4B6Q\n")
    write(sda / "scsi_disk/2:0:0:0/cache_type", "write back\n")
    sdb = tmp_path / "sys/devices/pci0000:17/0000:17:00.0/0000:18:00.0/host0/target0:2:0/0:2:0:0"
    write(sdb / "scsi_disk/0:2:0:0/cache_type", "write through\n")
    write(tmp_path / "sys/block/sda/queue/scheduler", "[mq-deadline] kyber bfq none\n")
    (tmp_path / "dev/disk/by-id").mkdir(parents=True)
    os.symlink("../../sda", tmp_path / "dev/disk/by-id/wwn-0x5002538e40a1b2c3")
    os.symlink("../../sda", tmp_path / "dev/disk/by-id/ata-Samsung_SSD_860_S3Z2NB0K123456A")
    disks = list_disks(str(tmp_path))
    got = facts_of(extra_hardware.disk_facts(str(tmp_path), disks))
    assert got[("disk", "logical", "count")] == len(disks)
    assert got[("disk", "sda", "size")] == 500                  # 976773168 sectors, GB
    assert got[("disk", "sda", "vendor")] == "ATA"
    assert got[("disk", "sda", "model")] == "Samsung SSD 860"
    assert got[("disk", "sda", "rev")] == "4B6Q"
    assert got[("disk", "sda", "serial")] == "S3Z2NB0K123456A"
    assert got[("disk", "sda", "rotational")] == 0
    assert got[("disk", "sda", "scheduler")] == "mq-deadline"
    assert got[("disk", "sda", "Write Cache Enable")] == 1
    assert got[("disk", "sda", "Read Cache Disable")] == 0
    assert got[("disk", "sda", "wwn-id")] == "wwn-0x5002538e40a1b2c3"
    assert got[("disk", "sda", "id")] == "ata-Samsung_SSD_860_S3Z2NB0K123456A"
    assert got[("disk", "sdb", "rotational")] == 1
    assert got[("disk", "sdb", "physical_block_size")] == 4096
    assert got[("disk", "sdb", "Write Cache Enable")] == 0
    assert got[("disk", "nvme0n1", "model")] == "INTEL SSDPE2KX010T8"
    assert got[("disk", "nvme0n1", "serial")] == "PHLJ9123004T1P0FGN"


def test_ipmi_channel_and_lan_fields(tmp_path, monkeypatch):
    write(tmp_path / "dev/ipmi0", "")
    fake = FakeTools({("ipmitool", "lan", "print", "2"): fixture("ipmitool_lan_print_1.txt")})
    monkeypatch.setattr(tools, "run", fake)
    facts = extra_hardware.ipmi_facts(str(tmp_path), None)
    got = facts_of(facts)
    assert facts[0] == ["system", "ipmi", "channel", 2]
    assert got[("ipmi", "lan", "ip-address")] == "10.10.0.12"
    assert got[("ipmi", "lan", "mac-address")] == "D0:94:66:AA:BB:CC"      # verbatim
    assert got[("ipmi", "lan", "ip-address-source")] == "Static Address"
    assert [c for c in fake.calls if c[0] == "modprobe"] == []   # no config: no modules


def test_no_ipmi_device_means_no_ipmi_facts(tmp_path, no_tools):
    assert extra_hardware.ipmi_facts(str(tmp_path), None) == []
    assert no_tools.calls == []


def test_ironic_extra_hardware_hook_accepts_every_fact_in_strict_mode(tmp_path, monkeypatch):
    server_tree(tmp_path)
    write(tmp_path / "dev/ipmi0", "")
    monkeypatch.setattr(tools, "run", FakeTools(
        {("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_1.txt")}))
    tables = devices.parse_dmidecode(fixture("dmidecode_supermicro_x11dpi.txt"))
    facts = extra_hardware.collect(str(tmp_path), dmi_tables=tables, arch="x86_64")
    facts += extra_hardware.collect(VM, disks=list, arch="x86_64")
    out = run_hooks({"data": json.loads(json.dumps(facts))}, extra_hardware_strict=True)
    extra = out["plugin_data"]["extra"]
    assert "data" not in out["plugin_data"]
    assert extra["memory"]["bank:0"]["size"] == 32 * GIB
    assert extra["disk"]["sda"]["size"] == 500
    assert extra["system"]["ipmi"]["channel"] == 1
    assert extra["cpu"]["physical_0"]["cores"] == 2
    assert extra["network"]["eth0"]["serial"] == "02:fc:00:00:00:01"


def test_collector_reuses_the_dmi_collectors_tables(monkeypatch):
    calls = []
    monkeypatch.setattr(devices, "dmi_info", lambda root="/": calls.append(root))
    monkeypatch.setattr(extra_hardware.managers, "list_disks", lambda state: [])
    monkeypatch.setattr(bmc, "lan_channel", lambda root="/": None)
    state = type("S", (), {"config": None})()
    tables = devices.parse_dmidecode(fixture("dmidecode_supermicro_x11dpi.txt"))
    data = {"dmi": tables}
    extra_hardware.collect_extra_hardware(state, data)
    assert calls == []
    got = facts_of(data["data"])
    assert got[("memory", "bank:2", "slot")] == "P2-DIMMA1"
    assert got[("disk", "logical", "count")] == 0
