"""The start-up network wait on real interfaces, in a namespace of the test's own.

A fresh namespace holds one end of a veth pair, up, so the kernel gives it an
IPv6 link-local address at once: that must not count.  The agent's wait runs
in the namespace as a child process; the test adds an IPv4 or a global IPv6
address while it waits, or none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for netns and veth")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CHILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from agent.hardware import netwait
started = time.monotonic()
ok = netwait.wait_for_address(float(sys.argv[1]))
print("RESULT", ok, round(time.monotonic() - started, 2), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def ns() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    name, near = f"nw-{tag}", f"nw{tag}"
    ip("netns", "add", name)
    try:
        ip("link", "add", near, "type", "veth", "peer", "name", near + "p")
        ip("link", "set", near + "p", "netns", name)
        ip("-n", name, "link", "set", near + "p", "up")
        ip("link", "set", near, "up")
        yield name, near + "p"
    finally:
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def start_wait(name: str, timeout: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", CHILD,
                             str(timeout)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))


def link_local_present(name: str, dev: str) -> bool:
    out = subprocess.run(["ip", "-n", name, "-6", "addr", "show", "dev", dev],
                         capture_output=True, text=True).stdout
    return "fe80::" in out


def test_a_link_local_address_alone_is_not_enough(ns) -> None:
    name, dev = ns
    for _ in range(50):                       # the kernel adds fe80:: once the link is up
        if link_local_present(name, dev):
            break
        time.sleep(0.1)
    assert link_local_present(name, dev)
    out, _ = start_wait(name, 0.8).communicate(timeout=30)
    assert "RESULT False" in out, out
    assert "no interface has an address after 1s" in out


@pytest.mark.parametrize("address,family", [("192.0.2.7/24", "-4"),
                                            ("2001:db8::7/64", "-6")])
def test_the_wait_ends_when_dhcp_would_have_given_an_address(ns, address, family) -> None:
    name, dev = ns
    child = start_wait(name, 30)
    time.sleep(0.5)                           # the child is polling by now (or soon)
    ip("-n", name, family, "addr", "add", address, "dev", dev, "nodad")
    out, _ = child.communicate(timeout=30)
    assert "RESULT True" in out, out
    assert f"network: {dev} has {address.split('/')[0]}" in out
