"""LLDP capture and VLAN sub-interfaces on real veth pairs, a switch played from a netns.

Each test gets a fresh namespace and two veth pairs: ``talk`` (a sender in
the namespace transmits an LLDP frame from the far end) and ``quiet`` (no
sender).  The near ends stay in this namespace, where ``capture`` listens.
Everything is deleted afterwards, on every path.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import types
import uuid
from collections.abc import Iterator

import pytest

from agent.hardware import lldp, vlan
from tests.unit.hardware.lldp_frames import SWITCH_FRAME, SWITCH_TLVS

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for netns and veth")

# a stand-in switch port: send the frame every 100 ms until killed
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
while True:
    s.send(frame)
    time.sleep(0.1)
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.ns = f"lldp-{tag}"
        self.talk, self.quiet = f"lt{tag}", f"lq{tag}"      # 7 chars: room for ".4094"
        self.senders: list[subprocess.Popen] = []

    def up(self) -> None:
        ip("netns", "add", self.ns)
        for near in (self.talk, self.quiet):
            far = near + "p"
            ip("link", "add", near, "type", "veth", "peer", "name", far)
            ip("link", "set", far, "netns", self.ns)
            ip("-n", self.ns, "link", "set", far, "up")
            ip("link", "set", near, "up")

    def send(self, frame: bytes = SWITCH_FRAME) -> None:
        self.senders.append(subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SENDER,
             self.talk + "p", frame.hex()]))

    def down(self) -> None:
        for proc in self.senders:
            proc.kill()
            proc.wait()
        for near in (self.talk, self.quiet):
            ip("link", "del", near, check=False)      # takes its VLANs and peer along
        ip("netns", "del", self.ns, check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    bench = Lab()
    try:
        bench.up()
        yield bench
    finally:
        bench.down()
    assert bench.ns not in ip("netns", "list").stdout
    assert ip("link", "show", bench.talk, check=False).returncode != 0


def _groups(name: str) -> set[str]:
    """Link-layer multicast groups joined on ``name`` (from /proc/net/dev_mcast)."""
    with open("/proc/net/dev_mcast") as f:
        return {fields[4] for fields in (line.split() for line in f) if fields[1] == name}


def _in_background(fn, *args):
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn(*args)))
    thread.start()
    return thread, out


def _wait_for(predicate, thread: threading.Thread) -> bool:
    # polls while the capture runs; the capture's own timeout ends the wait
    while thread.is_alive():
        if predicate():
            return True
        thread.join(0.02)
    return predicate()


def test_capture_hears_the_sender_and_not_the_silent_port(lab):
    lab.send()
    result = lldp.capture([lab.talk, lab.quiet], 3.0)
    assert result == {lab.talk: SWITCH_TLVS}


def test_membership_joined_while_listening_and_left_after(lab):
    group = "0180c200000e"
    assert group not in _groups(lab.quiet)
    thread, out = _in_background(lldp.capture, [lab.quiet], 2.0)
    joined = _wait_for(lambda: group in _groups(lab.quiet), thread)
    thread.join()
    assert joined
    assert out["result"] == {}
    assert group not in _groups(lab.quiet)


def test_own_transmissions_are_not_taken_for_the_switch(lab):
    # the kernel keeps outgoing frames from ETH_P_LLDP-bound sockets; an
    # ETH_P_ALL socket would need its own filter, and this test would catch it
    thread, out = _in_background(lldp.capture, [lab.quiet], 2.0)
    assert _wait_for(lambda: "0180c200000e" in _groups(lab.quiet), thread)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((lab.quiet, 0))
        for _ in range(3):
            sock.send(SWITCH_FRAME)                  # out of the near end: PACKET_OUTGOING
    thread.join()
    assert out["result"] == {}


def test_interface_deleted_mid_capture_is_logged_and_skipped(lab, caplog):
    lab.send()
    with caplog.at_level(logging.WARNING):
        thread, out = _in_background(lldp.capture, [lab.quiet, lab.talk, "nosuch0"], 5.0)
        assert _wait_for(lambda: "0180c200000e" in _groups(lab.quiet), thread)
        ip("link", "del", lab.quiet)
        thread.join()
    assert out["result"] == {lab.talk: SWITCH_TLVS}
    assert f"stopped listening on {lab.quiet}: ENETDOWN" in caplog.text
    assert "cannot listen on nosuch0" in caplog.text


def _vlan_id(name: str) -> int | None:
    proc = ip("-d", "link", "show", name, check=False)
    if proc.returncode != 0:
        return None
    words = proc.stdout.split()
    at = words.index("vlan")
    assert words[at + 1:at + 3] == ["protocol", "802.1Q"]
    return int(words[words.index("id", at) + 1])


def _kernel_has_vlan(lab: Lab) -> bool:
    probe = ip("link", "add", "link", lab.quiet, "name", lab.quiet + ".9", "type", "vlan",
               "id", "9", check=False)
    ip("link", "del", lab.quiet + ".9", check=False)
    return probe.returncode == 0


def _check_made(lab: Lab, made: list[str], expected: list[str], caplog) -> None:
    """The VLANs exist with their IDs; or, on a kernel without 802.1Q, ``ip`` got that far.

    Without CONFIG_VLAN_8021Q (this test machine's kernel) iproute2 parses the
    command and only the kernel refuses the link kind: the names and IDs chosen
    and the command's syntax are still checked, the creation itself is not.
    """
    if _kernel_has_vlan(lab):
        assert made == expected
        for name in expected:
            assert _vlan_id(name) == int(name.rsplit(".", 1)[1])
            flags = ip("link", "show", name).stdout.split("<")[1].split(">")[0].split(",")
            assert "UP" in flags
        return
    assert made == []
    refused = [r.getMessage() for r in caplog.records if "could not be set up" in r.message]
    for name, message in zip(expected, refused, strict=True):
        parent, vid = name.rsplit(".", 1)
        assert message == (f"VLAN interface {name} could not be set up: ip link add link "
                           f"{parent} name {name} type vlan id {vid} failed with exit code 2:"
                           f" Error: Unknown device type.")


def _config(*entries: str):
    return types.SimpleNamespace(enable_vlan_interfaces=list(entries), lldp_timeout=3.0)


def test_vlan_from_an_explicit_entry(lab, caplog):
    name = f"{lab.quiet}.42"
    _check_made(lab, vlan.create_vlan_interfaces(_config(name), None), [name], caplog)
    if _vlan_id(name) is not None:
        # a second run finds it there and changes nothing
        assert vlan.create_vlan_interfaces(_config(name), None) == [name]
        assert _vlan_id(name) == 42


def test_vlans_announced_by_lldp(lab, caplog):
    lab.send()
    made = vlan.create_vlan_interfaces(_config(lab.talk, lab.quiet), None)
    # port VLAN ID 100 and VLAN name 200 were announced on talk; quiet heard nothing
    _check_made(lab, made, [f"{lab.talk}.100", f"{lab.talk}.200"], caplog)
    assert f"LLDP announced no VLAN on {lab.quiet}" in caplog.text
    assert _vlan_id(f"{lab.quiet}.100") is None


def test_vlans_from_a_capture_already_made(lab, caplog):
    lab.send()
    heard = lldp.capture([lab.talk], 3.0)
    made = vlan.create_vlan_interfaces(_config("all"), heard)
    _check_made(lab, made, [f"{lab.talk}.100", f"{lab.talk}.200"], caplog)
