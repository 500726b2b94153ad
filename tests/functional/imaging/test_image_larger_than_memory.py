"""A qcow2 larger than the agent's memory deploys: staging uses the disk, not RAM.

The agent runs as a real process inside a memory cgroup capped below the size
of the image file; the image comes from a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest

from agent.driver.client import AgentClient
from tests.conftest import requires_loop

MiB = 1 << 20
CGROUP_ROOT = "/sys/fs/cgroup/memory"      # cgroup v1, as on these machines
LIMIT = 160 * MiB


def _cgroup_v1_available() -> bool:
    return os.path.isdir(CGROUP_ROOT) and os.access(CGROUP_ROOT, os.W_OK)


pytestmark = [requires_loop,
              pytest.mark.skipif(not _cgroup_v1_available(),
                                 reason="needs a writable cgroup v1 memory controller")]


@pytest.fixture
def memory_cgroup():
    path = os.path.join(CGROUP_ROOT, f"deploy-agent-test-{os.getpid()}")
    os.mkdir(path)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
        f.write(str(LIMIT))
    yield path
    with open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
    for _ in range(50):
        try:
            os.rmdir(path)
            break
        except OSError:
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_qcow2_larger_than_the_memory_limit(memory_cgroup, image_server, make_loop, tmp_path):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(288 * MiB)
        f.seek(MiB)
        for _ in range(230):                # incompressible: the qcow2 stays large
            f.write(os.urandom(MiB))
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(raw)], check=True, capture_output=True)
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)],
                   check=True, capture_output=True)
    blob = qcow.read_bytes()
    assert len(blob) > LIMIT                 # the image file alone exceeds the cap
    image_server.files["disk.qcow2"] = blob
    dev = make_loop(640 * MiB)

    port = _free_port()
    procs_file = os.path.join(memory_cgroup, "cgroup.procs")

    def enter_cgroup() -> None:
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--standalone", "--include-loop-devices",
         "--listen", "127.0.0.1", "--port", str(port)],
        preexec_fn=enter_cgroup, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    try:
        client = AgentClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.status()
                break
            except Exception:
                assert agent.poll() is None, agent.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        result = client.post("standby.prepare_image", {
            "image_info": {"id": "big", "urls": [f"{image_server.url}/disk.qcow2"],
                           "disk_format": "qcow2", "os_hash_algo": "sha256",
                           "os_hash_value": hashlib.sha256(blob).hexdigest()},
            "node": {"properties": {"root_device": {"name": dev}}}})
        result = client.get(result["id"], wait=True)
        assert result["command_status"] == "SUCCEEDED", result["command_error"]
        assert result["command_result"]["write"]["image_format"] == "qcow2"
        with open(os.path.join(memory_cgroup, "memory.max_usage_in_bytes")) as f:
            peak = int(f.read())
        with open(os.path.join(memory_cgroup, "memory.failcnt")) as f:
            failcnt = int(f.read())
        assert peak < LIMIT and failcnt == 0, (peak, failcnt)
    finally:
        agent.terminate()
        agent.wait(10)
    with open(dev, "rb") as f:
        data = f.read(288 * MiB)
    # the first sector and the GPT change when the backup header is moved to the end
    assert data[MiB:231 * MiB] == raw.read_bytes()[MiB:231 * MiB]
    print(f"image file {len(blob) // MiB} MiB, cgroup limit {LIMIT // MiB} MiB, "
          f"peak {peak / MiB:.0f} MiB")
