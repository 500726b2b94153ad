"""NIC listing from a sysfs-shaped tree, and the ioctls on this machine's NICs."""

from __future__ import annotations

import os
import socket

from agent.hardware import interfaces
from tests.unit.hardware.fake_sysfs import write

IF_INET6 = """\
fe800000000000000ac47afffe123456 02 40 20 80     eno1
20010db8000000000000000000000052 02 40 00 80     eno1
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000202c9030012abcd 05 40 20 80     ib0
"""


def nic(root, name, *, address, pci=None, driver=None, speed="1000", carrier="1",
        link_type="1", vendor="0x14e4", product="0x165f"):
    base = root / "sys/class/net" / name
    write(base / "address", address + "\n")
    write(base / "type", link_type + "\n")
    write(base / "speed", speed + "\n")
    write(base / "carrier", carrier + "\n")
    if pci:
        dev = root / "sys/devices/pci0000:00" / pci
        write(dev / "vendor", vendor + "\n")
        write(dev / "device", product + "\n")
        if driver:
            drv = root / "sys/bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            os.symlink(drv, dev / "driver")
        os.symlink(dev, base / "device")


def test_physical_nics_only_with_pci_facts(tmp_path):
    nic(tmp_path, "eno1", address="0C:C4:7A:12:34:56", pci="0000:18:00.0", driver="tg3")
    nic(tmp_path, "ib0", link_type="32", pci="0000:5e:00.0", driver="mlx5_core",
        address="a0:00:02:20:fe:80:00:00:00:00:00:00:02:02:c9:03:00:12:ab:cd",
        speed="-1", carrier="0", vendor="0x15b3", product="0x1017")
    nic(tmp_path, "br0", address="0c:c4:7a:12:34:56")        # virtual: no device
    write(tmp_path / "proc/net/if_inet6", IF_INET6)
    found = {i["name"]: i for i in interfaces.collect(str(tmp_path), live=False)}
    assert sorted(found) == ["eno1", "ib0"]
    assert found["eno1"] == {
        "name": "eno1", "mac_address": "0c:c4:7a:12:34:56", "ipv4_address": None,
        "ipv6_address": "2001:db8::52", "has_carrier": True, "lldp": None,
        "vendor": "0x14e4", "product": "0x165f", "client_id": None, "biosdevname": None,
        "speed_mbps": 1000, "pci_address": "0000:18:00.0", "driver": "tg3"}
    ib = found["ib0"]
    assert ib["mac_address"] == "02:02:c9:12:ab:cd"
    assert ib["client_id"] == "ff:00:00:00:00:00:02:00:00:02:c9:00:02:02:c9:03:00:12:ab:cd"
    assert ib["ipv6_address"] == "fe80::202:c903:12:abcd"   # link-local when nothing better
    assert ib["speed_mbps"] is None and ib["has_carrier"] is False


def test_ioctls_on_this_machine_match_sysfs():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        nics = [n for n in os.listdir("/sys/class/net")
                if os.path.exists(f"/sys/class/net/{n}/device")]
        assert nics, "this machine has at least one NIC"
        for name in nics:
            perm = interfaces.permanent_mac(sock, name)
            with open(f"/sys/class/net/{name}/address") as f:
                current = f.read().strip()
            # a NIC whose MAC was never rewritten reports the same permanent address
            assert perm in (None, current)
        assert interfaces.permanent_mac(sock, "lo") is None           # all-zero MAC
        assert interfaces.ipv4_address(sock, "lo") == "127.0.0.1"
        assert interfaces.ipv4_address(sock, "no-such-nic0") is None
    finally:
        sock.close()
