"""Inventory composition: exact keys, null parts with a logged reason."""

from __future__ import annotations

import os
import types

from agent import tools
from agent.hardware import cpu, inventory
from tests.unit.hardware.fake_md import add_md, add_virtio_disk, mirror_tree
from tests.unit.hardware.fake_sysfs import server_tree, write
from tests.unit.hardware.tool_fakes import FakeTools, fixture

PPC = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hardware", "ppc64le")
KEYS = {"interfaces", "cpu", "disks", "memory", "bmc_address", "bmc_v6address",
        "system_vendor", "boot", "hostname", "raid_arrays"}


def config(**kw):
    values = dict(include_loop_devices=False, bootif=None, skip_bmc_detect=False)
    values.update(kw)
    return types.SimpleNamespace(**values)


def test_ppc64le_fixture_inventory():
    inv = inventory.collect(config(bootif="01-0c-c4-7a-12-34-56"), root=PPC, arch="ppc64le",
                            live=False, disk_lister=list)
    assert set(inv) == KEYS
    assert inv["cpu"]["architecture"] == "ppc64le"
    assert inv["memory"] == {"total": 535318592 * 1024, "physical_mb": 524288}
    assert inv["system_vendor"]["product_name"] == "IBM,8335-GTH"
    assert inv["boot"] == {"current_boot_mode": "bios",
                           "pxe_interface": "01-0c-c4-7a-12-34-56"}
    assert inv["bmc_address"] is None and inv["bmc_v6address"] is None
    assert inv["disks"] == [] and inv["interfaces"] == []
    assert inv["raid_arrays"] == []


def test_a_failing_part_is_null_and_logged(tmp_path, monkeypatch, caplog):
    server_tree(tmp_path)
    write(tmp_path / "proc/meminfo", "MemTotal:       1024 kB\n")

    def broken(*_a, **_k):
        raise ValueError("cpuinfo is garbage")
    monkeypatch.setattr(cpu, "collect", broken)
    inv = inventory.collect(config(), root=str(tmp_path), live=False)
    assert inv["cpu"] is None
    assert "inventory part 'cpu' could not be read and is null: ValueError" in caplog.text
    assert [d["name"] for d in inv["disks"]] == ["/dev/md0", "/dev/nvme0n1", "/dev/sda",
                                                 "/dev/sdb"]
    assert inv["memory"]["total"] == 1024 * 1024


def test_bmc_mac_key_only_when_found(tmp_path, monkeypatch):
    write(tmp_path / "dev/ipmi0", "")
    write(tmp_path / "proc/meminfo", "MemTotal:       1024 kB\n")
    monkeypatch.setattr(tools, "run", FakeTools(
        {("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_1.txt")}))
    inv = inventory.collect(config(), root=str(tmp_path), live=False, disk_lister=list)
    assert inv["bmc_address"] == "10.10.0.12"
    assert inv["bmc_mac"] == "d0:94:66:aa:bb:cc"
    assert inv["bmc_v6address"] == "::/0"
    monkeypatch.setattr(tools, "run", FakeTools(
        {("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_unset.txt")}))
    inv = inventory.collect(config(), root=str(tmp_path), live=False, disk_lister=list)
    assert "bmc_mac" not in inv and inv["bmc_address"] == "0.0.0.0"


def test_raid_arrays_and_their_member_disks(tmp_path):
    mirror_tree(tmp_path, names=("root",))
    vdc = add_virtio_disk(tmp_path, "vdc", 6)
    vdd = add_virtio_disk(tmp_path, "vdd", 7)
    add_md(tmp_path, "md0", [vdc, vdd], level="raid0", names=("scratch",))
    write(tmp_path / "proc/meminfo", "MemTotal:       1024 kB\n")
    inv = inventory.collect(config(), root=str(tmp_path), live=False)
    # arrays are deploy targets; a whole-disk member is reported through its array only
    assert [d["name"] for d in inv["disks"]] == ["/dev/md0", "/dev/md127", "/dev/vda",
                                                 "/dev/vdb"]
    assert inv["raid_arrays"] == [
        {"name": "/dev/md0", "volume_name": "scratch", "raid_level": "0",
         "members": ["/dev/vdc", "/dev/vdd"], "member_disks": ["/dev/vdc", "/dev/vdd"],
         "state": "clean", "size": 41943040 * 512, "metadata": "1.2"},
        {"name": "/dev/md127", "volume_name": "root", "raid_level": "1",
         "members": ["/dev/vda2", "/dev/vdb2"], "member_disks": ["/dev/vda", "/dev/vdb"],
         "state": "clean", "size": 20967424 * 512, "metadata": "1.2"}]
    assert set(inv) == KEYS
