"""IPMI driver loading: in a ramdisk only, once per process, failures not fatal.

modprobe is faked through the tool runner's seam; the fake for ipmi_si
creates /dev/ipmi0 in the fixture root, as udev does after the driver binds.
"""

from __future__ import annotations

import pytest

from agent import config, tools
from agent.errors import ToolError
from agent.hardware import bmc
from tests.unit.hardware.tool_fakes import FakeTools, fixture

MODPROBES = [("modprobe", "ipmi_msghandler"), ("modprobe", "ipmi_devintf"),
             ("modprobe", "ipmi_si")]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(bmc, "_modules_tried", False)


def cfg(ramdisk):
    return config.load(read_proc=False, env={}, flags={"ramdisk": ramdisk})


def bmc_tools(root, si_result=""):
    def load_si(key):
        if isinstance(si_result, Exception):
            return si_result
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev/ipmi0").write_text("")
        return si_result
    return FakeTools({
        ("modprobe", "ipmi_msghandler"): "", ("modprobe", "ipmi_devintf"): "",
        ("modprobe", "ipmi_si"): load_si,
        ("ipmitool", "lan", "print", "1"): fixture("ipmitool_lan_print_1.txt"),
        ("ipmitool", "lan6", "print", "1", "dynamic_addr"):
            fixture("ipmitool_lan6_dynamic_addr.txt"),
    })


def test_ramdisk_loads_the_drivers_once_and_finds_the_bmc(tmp_path, monkeypatch):
    fake = bmc_tools(tmp_path)
    monkeypatch.setattr(tools, "run", fake)
    first = bmc.collect(str(tmp_path), config=cfg("true"))
    assert first == {"bmc_address": "10.10.0.12", "bmc_mac": "d0:94:66:aa:bb:cc",
                     "bmc_v6address": "2001:db8:10::12"}
    assert [c for c in fake.calls if c[0] == "modprobe"] == MODPROBES
    assert fake.calls.index(MODPROBES[-1]) < fake.calls.index(("ipmitool", "lan", "print", "1"))
    assert bmc.collect(str(tmp_path), config=cfg("true")) == first
    assert bmc.load_modules(cfg("true")) is False
    assert [c for c in fake.calls if c[0] == "modprobe"] == MODPROBES   # still once


def test_not_a_ramdisk_never_runs_modprobe(tmp_path, monkeypatch):
    fake = bmc_tools(tmp_path)
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.collect(str(tmp_path), config=cfg("false")) == {
        "bmc_address": None, "bmc_v6address": None}
    assert fake.calls == []


def test_auto_on_a_disk_backed_root_is_not_a_ramdisk(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n")
    real = config.is_ramdisk
    monkeypatch.setattr(bmc, "is_ramdisk", lambda c: real(c, str(mounts)))
    fake = bmc_tools(tmp_path)
    monkeypatch.setattr(tools, "run", fake)
    assert bmc.load_modules(cfg("auto")) is False
    assert bmc.load_modules(None, str(tmp_path)) is False     # the live default: auto
    mounts.write_text("rootfs / rootfs rw 0 0\n")
    assert bmc.load_modules(None, str(tmp_path)) is True
    assert [c for c in fake.calls if c[0] == "modprobe"] == MODPROBES


def test_live_root_of_this_machine_is_not_a_ramdisk(monkeypatch):
    """The tests run on a disk-backed root: reading "/" must not modprobe here."""
    if config.is_ramdisk(config.Config()):
        pytest.skip("this machine runs from an initramfs")
    fake = FakeTools()
    monkeypatch.setattr(tools, "run", fake)
    bmc.collect("/")
    assert [c for c in fake.calls if c[0] == "modprobe"] == []


def test_a_driver_that_does_not_load_is_logged_not_fatal(tmp_path, monkeypatch, caplog):
    no_device = ToolError("modprobe ipmi_si failed with exit code 1: modprobe: ERROR: could "
                          "not insert 'ipmi_si': No such device", tool="modprobe", returncode=1)
    fake = bmc_tools(tmp_path, si_result=no_device)
    monkeypatch.setattr(tools, "run", fake)
    sleeps: list[float] = []
    monkeypatch.setattr(bmc.time, "sleep", sleeps.append)
    caplog.set_level("INFO", logger="agent.hardware.bmc")
    assert bmc.collect(str(tmp_path), config=cfg("true")) == {
        "bmc_address": None, "bmc_v6address": None}
    assert sleeps == []                  # no ipmi_si, no device node to wait for
    assert "modprobe ipmi_si did not load" in caplog.text
    assert bmc.collect(str(tmp_path), config=cfg("true"))["bmc_address"] is None
    assert [c for c in fake.calls if c[0] == "modprobe"] == MODPROBES   # not retried


def test_skip_flag_loads_nothing(tmp_path, monkeypatch):
    fake = bmc_tools(tmp_path)
    monkeypatch.setattr(tools, "run", fake)
    bmc.collect(str(tmp_path), skip=True, config=cfg("true"))
    assert fake.calls == []


def test_modprobe_is_a_named_tool_from_kmod():
    assert tools.TOOLS["modprobe"].package == "kmod"
    assert not tools.TOOLS["modprobe"].required
