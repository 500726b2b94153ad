"""SIGKILL a real agent process mid-download: the disk it leaves must not boot."""

from __future__ import annotations

import hashlib
import os
import signal

import requests

from agent.disk.partition_table import read_table
from tests.conftest import requires_loop
from tests.functional.imaging.test_deploy_safety import (
    STALL_AT,
    assert_no_table,
    ext4_root,
    old_disk,
    wait_streaming,
)
from tests.functional.imaging.test_stream_faults import gpt_anywhere
from tests.functional.imaging.test_stream_image import make_gpt_image
from tests.functional.test_agent_process import Agent

pytestmark = requires_loop
MiB = 1 << 20


def kill_when_stalled(tmp_path, server, dev, image_info, streaming=lambda: None) -> None:
    agent = Agent(str(tmp_path), "--include-loop-devices", "--ramdisk", "false")
    try:
        resp = requests.post(f"{agent.url}/v1/commands/?wait=false", timeout=30, json={
            "name": "standby.prepare_image",
            "params": {"image_info": image_info,
                       "node": {"properties": {"root_device": {"name": dev}}}}})
        assert resp.status_code == 200, resp.text
        assert server.stalled.wait(90), f"the download never stalled:\n{agent.output()}"
        streaming()
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(30)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(30)
        agent.log.close()
        server.release.set()


def test_kill_while_a_partition_image_streams(tmp_path, server, make_loop):
    dev = make_loop(96 * MiB)
    old_disk(dev)
    data = ext4_root(tmp_path, 48 * MiB)
    server.files["root"] = data
    # far past the 8 MiB read before partitioning, plus what socket buffers hold
    server.stall_at["root"] = STALL_AT
    kill_when_stalled(tmp_path, server, dev, {
        "id": "p", "urls": [f"{server.url}/root"], "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(data).hexdigest(), "image_type": "partition",
        "root_mb": 56, "disk_label": "msdos"}, lambda: wait_streaming(dev, data))
    assert_no_table(dev)


def test_kill_during_the_download_after_a_checksum_mismatch(tmp_path, server, make_loop):
    dev = make_loop(64 * MiB)
    image = make_gpt_image(tmp_path)
    server.files["image.raw"] = image

    # the first pass is served whole; the second one stalls half way
    original = server._handle

    def handle(h):
        if server.count("image.raw") >= 1:
            server.stall_at["image.raw"] = 12 * MiB
        original(h)
    server._handle = handle
    kill_when_stalled(tmp_path, server, dev, {
        "id": "w", "urls": [f"{server.url}/image.raw"], "os_hash_algo": "sha256",
        "os_hash_value": "4" * 64})
    assert server.count("image.raw") == 2
    assert read_table(dev).kind is None
    assert gpt_anywhere(dev, len(image)) == []
