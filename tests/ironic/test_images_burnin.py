"""qcow2 images and network burn-in, driven by a real Ironic 39.

* A qcow2 whole-disk image whose file is larger than the room its target has
  beyond the virtual size: the agent must stage it in memory.  Ironic's
  default ``[agent]image_download_source = http`` hands an http(s) URL to the
  agent as it is (``[DEFAULT]force_raw_images`` only applies where Ironic
  caches the image itself: ``local`` or ``file://``), so the agent receives
  the qcow2, and ``image_disk_format`` qcow2 is passed through unchanged.
* A qcow2 partition image, converted into the root partition.
* ``burnin_network`` between two nodes cleaned at the same time, with two
  agents on this host.  There is one NIC here and Ironic refuses a second
  port with its MAC, so the port moves to the second node once the first
  agent has looked its node up (agents heartbeat by node UUID after that).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import NODE_INTERFACES, keep_logs_of, to_available
from tests.ironic.test_deploy import DEPLOY_TIMEOUT_S, assert_clean_finish, whole_disk_info
from tests.ironic.test_partition import partition_info
from tests.ironic.test_steps import CLEAN_TIMEOUT_S, mounted_ro

pytestmark = requires_loop
MiB = harness.MiB
GiB = 1 << 30
VIRTUAL = 256 * MiB
PAYLOAD = 96 * MiB          # more than the 63 MiB a 320 MiB disk has beyond 257 MiB


def tight_qcow2(tmp_path) -> tuple[str, str]:
    """(raw path, qcow2 path): a 256 MiB GPT disk whose qcow2 file is about 96 MiB."""
    raw = str(tmp_path / "tight.raw")
    with open(raw, "wb") as f:
        f.truncate(VIRTUAL)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-c", "1:payload", raw], check=True,
                   capture_output=True)
    with open(raw, "r+b") as f:
        f.seek(MiB)
        f.write(harness.pattern(b"tight-qcow2", PAYLOAD))
    qcow2 = str(tmp_path / "tight.qcow2")
    harness.qcow2_of(raw, qcow2)
    return raw, qcow2


def expected_disk(raw: str, size: int) -> str:
    """What the disk must hold: the raw image, its backup GPT moved to the disk's end.

    After writing, the agent moves the backup GPT from the image's end to the
    disk's (as sfdisk's gpt-bak-std does); the payload and the zeros beyond
    the image stay as they are: memory staging never writes the tail.
    """
    out = raw + ".expected"
    subprocess.run(["cp", "--sparse=always", raw, out], check=True)
    with open(out, "r+b") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--relocate",
                    "gpt-bak-std", out], check=True, capture_output=True)
    return out


def guest_difference(expected: str, disk: str) -> str:
    """"" when both hold the same bytes (qemu-img compare), else where they differ."""
    with open(expected, "rb") as a, open(disk, "rb") as b:
        if a.seek(0, os.SEEK_END) != b.seek(0, os.SEEK_END):
            return f"sizes differ: {a.tell()} and {b.tell()} bytes"
    # not -s: that also compares which blocks are allocated
    out = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                          expected, disk],
                         capture_output=True, text=True)
    if out.returncode not in (0, 1):
        raise AssertionError(f"qemu-img compare failed: {out.stderr}")
    return "" if out.returncode == 0 else out.stdout.strip()


def test_qcow2_whole_disk_staged_in_memory_on_a_tight_disk(api, ironic, images, agent,
                                                           make_node, make_loop, tmp_path):
    disk = make_loop(320 * MiB)
    raw, qcow2 = tight_qcow2(tmp_path)
    with open(qcow2, "rb") as f:
        url, sha = images.add("tight.qcow2", f.read())
    file_size = os.path.getsize(qcow2)
    # the disk's tail cannot hold the file: only memory staging can deploy it
    assert file_size > 320 * MiB - (VIRTUAL + MiB)
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.start()
    watch = harness.StepWatch(ironic.options["database"]["connection"], node["uuid"])
    api.patch_node(node["uuid"], **{f"instance_info/{k}": v for k, v in
                                    whole_disk_info(url, sha, "qcow2").items()})
    started = time.monotonic()
    api.provision(node["uuid"], "active")
    done = api.wait_for(node["uuid"], "active", DEPLOY_TIMEOUT_S, on_poll=watch)
    seconds = time.monotonic() - started

    assert_clean_finish(done, "active")
    # Ironic passed the qcow2 through: the agent was told its format, not "raw"
    assert done["instance_info"]["image_disk_format"] == "qcow2"
    assert guest_difference(expected_disk(raw, 320 * MiB), disk) == ""
    result = watch.step_results(str(tmp_path), "deploy")["write_image"]
    assert result["command_status"] == "SUCCEEDED"
    assert result["write"]["write_path"] == "memory"
    conversion = result["write"]["conversion"]
    assert conversion["staging"] == "memory", conversion
    assert conversion["staged_bytes"] == file_size
    assert "staged_at" not in conversion
    print(f"qcow2 ({file_size >> 20} MiB file, 256 MiB virtual) onto a 320 MiB disk: "
          f"{seconds:.1f}s")


def test_qcow2_partition_image(api, images, agent, make_node, make_loop, tmp_path):
    disk = make_loop(2 * GiB)       # root_gb is whole GiB; the config drive goes after it
    raw_path = str(tmp_path / "root.ext4")
    raw = harness.ext4_image(raw_path, marker="qcow2-partition")
    qcow2 = harness.qcow2_of(raw_path, str(tmp_path / "root.qcow2"))
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.params["ipa-ignore-bootloader-failure"] = "1"
    agent.start()
    info = dict(partition_info(images, "root.qcow2", qcow2), image_disk_format="qcow2")
    api.patch_node(node["uuid"], **{f"instance_info/{k}": v for k, v in info.items()})
    started = time.monotonic()
    api.provision(node["uuid"], "active")
    done = api.wait_for(node["uuid"], "active", DEPLOY_TIMEOUT_S)
    seconds = time.monotonic() - started

    assert_clean_finish(done, "active")
    assert done["instance_info"]["image_disk_format"] == "qcow2"
    root = [p for p in harness.partitions(disk)
            if harness.read_disk(disk, p["offset"], 64 * 1024) == raw[:64 * 1024]]
    assert len(root) == 1, harness.partitions(disk)
    assert root[0]["bytes"] == GiB
    assert harness.read_disk(disk, root[0]["offset"], len(raw)) == raw
    number = harness.partitions(disk).index(root[0]) + 1
    with mounted_ro(disk, number) as where:
        with open(os.path.join(where, "etc", "marker"), encoding="utf-8") as f:
            assert f.read() == "qcow2-partition\n"
    print(f"qcow2 partition image deploy: {seconds:.1f}s")


# -- burnin_network ------------------------------------------------------------------------

@pytest.fixture
def bare_nodes(api) -> Iterator[Callable[..., dict[str, Any]]]:
    """``bare_node(disk, **driver_info)``: a node without a port (deleted afterwards)."""
    created: list[str] = []

    def make(disk: str, **driver_info: Any) -> dict[str, Any]:
        node = api.create_node(**NODE_INTERFACES, properties={"root_device": {"name": disk}},
                               driver_info={"deploy_forces_oob_reboot": True, **driver_info})
        created.append(node["uuid"])
        return node

    yield make
    for uuid in created:
        with contextlib.suppress(Exception):
            api.request("PUT", f"/v1/nodes/{uuid}/maintenance", json={"reason": "test done"})
            api.delete_node(uuid)


def move_port(api, mac: str, to_node: str, timeout: float = 30) -> None:
    """The host's one MAC goes to ``to_node`` (retrying while Ironic holds a node lock)."""
    deadline = time.monotonic() + timeout
    while True:
        ports = api.request("GET", "/v1/ports", params={"address": mac})["ports"]
        try:
            for port in ports:
                api.request("DELETE", f"/v1/ports/{port['uuid']}")
            api.create_port(to_node, mac)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def fio_ports(count: int) -> int:
    """The first of ``count`` free ports below the ephemeral range.

    An ephemeral base could be handed to an agent's API (``harness.free_port``)
    while a writer's fio is still starting.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
        ephemeral = int(f.read().split()[0])
    for base in range(ephemeral - count, 1024, -count):
        with contextlib.ExitStack() as stack:
            try:
                for n in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("", base + n))
            except OSError:
                continue
            return base
    raise AssertionError(f"no {count} consecutive free ports below {ephemeral}")


class Waiter(threading.Thread):
    """``api.wait_for`` in a thread, so two nodes' flows are watched at once."""

    def __init__(self, api, uuid: str, state: str, timeout: float,
                 on_poll: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(daemon=True)
        self.call = (api, uuid, state, timeout, on_poll)
        self.node: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        api, uuid, state, timeout, on_poll = self.call
        started = time.monotonic()
        try:
            self.node = api.wait_for(uuid, state, timeout, on_poll=on_poll)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self.error = exc
        self.seconds = time.monotonic() - started

    def result(self) -> dict[str, Any]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.node


def test_manual_clean_burnin_network_between_two_nodes(api, ironic, bare_nodes, make_loop,
                                                       tmp_path, request):
    mac = harness.host_mac()
    port = fio_ports(16)            # both nodes listen (in turn) and connect on these
    knobs = {"agent_burnin_fio_network_runtime": 1, "agent_burnin_fio_network_port": port,
             "agent_burnin_fio_network_pairing_timeout": 60}
    roles = {"writer": None, "reader": None}
    nodes, agents, watches, waiters = {}, {}, {}, {}
    for role in roles:
        nodes[role] = bare_nodes(make_loop(16 * MiB), **knobs,
                                 agent_burnin_fio_network_config={
                                     "role": role, "partner": harness.LOOPBACK})
        api.provision(nodes[role]["uuid"], "manage")
        api.wait_for(nodes[role]["uuid"], "manageable", 60)
        agents[role] = harness.Agent(str(tmp_path), ironic.url, name=f"net-{role}")
        keep_logs_of(request, agents[role])
    db = ironic.options["database"]["connection"]
    started = time.monotonic()
    try:
        for role in roles:
            uuid = nodes[role]["uuid"]
            move_port(api, mac, uuid)
            watches[role] = harness.StepWatch(db, uuid)
            api.provision(uuid, "clean", clean_steps=[
                {"interface": "deploy", "step": "burnin_network"}])
            agents[role].start()
            # the agent has looked this node up once Ironic holds its token
            harness.wait_until(lambda w=watches[role], u=uuid: w(api.node(u)) or w.token,
                               60, f"the {role} agent's lookup")
            waiters[role] = Waiter(api, uuid, "manageable", CLEAN_TIMEOUT_S, watches[role])
            waiters[role].start()
        done = {role: waiters[role].result() for role in roles}
        seconds = time.monotonic() - started

        results = {}
        for role in roles:
            assert_clean_finish(done[role], "manageable")
            results[role] = watches[role].step_results(str(tmp_path), "clean")["burnin_network"]
    finally:
        for booted in agents.values():
            booted.stop()
    for role, other in (("writer", "reader"), ("reader", "writer")):
        result = results[role]
        assert result["command_status"] == "SUCCEEDED", result
        assert (result["tool"], result["role"], result["partner"], result["port"],
                result["runtime_s"], result["streams"]) == (
            "fio", role, harness.LOOPBACK, port, 1, 16)
        # each node tested both directions, its own role first
        assert [d["role"] for d in result["directions"]] == [role, other]
        for direction in result["directions"]:
            assert direction["bytes"] > 0 and direction["bw_bytes"] > 0, direction
            assert direction["runtime_ms"] > 0
    # in each direction the reading node got no more than its partner wrote (what was
    # in the sockets' buffers when the writer stopped is lost)
    for n in (0, 1):
        ends = {d["role"]: d for d in (results["writer"]["directions"][n],
                                       results["reader"]["directions"][n])}
        assert set(ends) == {"writer", "reader"}
        assert 0 < ends["reader"]["bytes"] <= ends["writer"]["bytes"], ends
    print(f"manual clean burnin_network on two nodes: {seconds:.1f}s")
