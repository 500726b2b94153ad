"""The inventory of this machine, checked against lsblk, /proc/meminfo and ip.

Each comparison source is read independently of the agent's code.
"""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from agent import config
from agent.commands import CommandRunner
from agent.extensions.poll import PollExtension
from agent.state import AgentState

TOP_KEYS = {"interfaces", "cpu", "disks", "memory", "bmc_address", "bmc_v6address",
            "system_vendor", "boot", "hostname", "raid_arrays"}


@pytest.fixture(scope="module")
def inventory():
    state = AgentState(config.load(read_proc=False, env={}))
    result = CommandRunner([PollExtension(state)]).execute("poll.get_hardware_info", {})
    assert result.status == "SUCCEEDED", result.error
    data = result.to_dict()["command_result"]
    json.dumps(data)                                        # wire-safe
    return data


def run_json(*argv: str):
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def test_top_level_keys_and_types(inventory):
    assert TOP_KEYS <= set(inventory) <= TOP_KEYS | {"bmc_mac"}
    # this kernel has no md driver: the additive key is there, and empty
    assert inventory["raid_arrays"] == []
    assert isinstance(inventory["hostname"], str) and inventory["hostname"] == \
        socket.gethostname()
    assert inventory["boot"]["current_boot_mode"] in ("uefi", "bios")
    cpu = inventory["cpu"]
    assert isinstance(cpu["count"], int) and cpu["count"] >= 1
    assert isinstance(cpu["flags"], list)
    assert cpu["architecture"] == subprocess.run(["uname", "-m"], capture_output=True,
                                                 text=True).stdout.strip()


def test_disks_match_lsblk(inventory):
    listing = run_json("lsblk", "-J", "-b", "-d", "-o",
                       "NAME,SIZE,ROTA,TYPE,LOG-SEC,PHY-SEC,MODEL,VENDOR,TRAN,HCTL")
    expected = {f"/dev/{d['name']}": d for d in listing["blockdevices"]
                if d["type"] == "disk" and int(d["size"]) > 0
                and not d["name"].startswith(("zram", "ram", "fd", "sr"))}
    got = {d["name"]: d for d in inventory["disks"]}
    assert set(got) == set(expected)
    assert got, "this machine has at least one disk"
    for name, want in expected.items():
        disk = got[name]
        assert disk["size"] == int(want["size"])
        assert disk["rotational"] is bool(want["rota"])
        assert disk["logical_sectors"] == int(want["log-sec"])
        assert disk["physical_sectors"] == int(want["phy-sec"])
        for ours, theirs in (("model", "model"), ("vendor", "vendor"), ("tran", "tran"),
                             ("hctl", "hctl")):
            if want[theirs]:
                assert disk[ours] == want[theirs].strip(), (name, ours)


def test_memory_matches_proc_meminfo(inventory):
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert inventory["memory"]["total"] == kib * 1024
    physical = inventory["memory"]["physical_mb"]
    assert physical is None or physical * 1024 * 1024 >= kib * 1024


def test_interfaces_match_ip_link(inventory):
    links = run_json("ip", "-d", "-j", "addr", "show")
    physical = {link["ifname"]: link for link in links if link.get("parentbus")}
    got = {i["name"]: i for i in inventory["interfaces"]}
    assert set(got) == set(physical)
    assert got, "this machine has at least one NIC"
    for name, link in physical.items():
        nic = got[name]
        assert nic["mac_address"] == (link.get("permaddr") or link["address"]).lower()
        v4 = [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"]
        assert nic["ipv4_address"] == (v4[0] if v4 else None)
        v6 = [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet6"]
        assert nic["ipv6_address"] in (v6 or [None])
        assert nic["has_carrier"] is ("LOWER_UP" in link["flags"])
