"""Issue 15, data safety, through the API on loop devices and a real image server.

Validation before any touch (1), partition images that reach the network
before the table changes (2) and the "already written" shortcut (4).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time

import pytest

from agent import config as config_mod
from agent.api import create_app
from agent.commands import CommandRunner
from agent.disk.partition_table import read_table
from agent.extensions import load_extensions
from agent.state import AgentState
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1 << 20
SECRET = "Z9Q7-caller-value"
# far past the 8 MiB read before partitioning, plus what loopback socket buffers hold:
# a download stalled here is streaming into the root partition
STALL_AT = 40 * MiB
MARK = 12 * MiB          # random bytes here in every test root image


def make_agent(**flags):
    cfg = config_mod.load(cmdline="", env={}, flags={
        "standalone": True, "include_loop_devices": True,
        "image_download_connection_retry_interval": 0.01,
        "image_download_connection_retries": 1, "disk_wait_attempts": 1,
        "image_download_connection_timeout": 10, **flags})
    state = AgentState(cfg)
    return state, create_app(state, CommandRunner(load_extensions(state))).test_client()


@pytest.fixture
def agent():
    return make_agent()


def post(client, name, params):
    resp = client.post("/v1/commands/?wait=true", json={"name": name, "params": params})
    return resp.status_code, resp.get_json()


def info(server, data, name="img", **extra):
    server.files[name] = data
    return {"id": "img-1", "urls": [f"{server.url}/{name}"], "os_hash_algo": "sha256",
            "os_hash_value": hashlib.sha256(data).hexdigest(), **extra}


def node_for(dev):
    return {"properties": {"root_device": {"name": dev}}}


def gpt_image(tmp_path, fill: bytes | None = None) -> bytes:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(path)], check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(fill or os.urandom(MiB))
    return path.read_bytes()


def ext4_root(tmp_path, size: int = 16 * MiB) -> bytes:
    root = tmp_path / "root.ext4"
    with open(root, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", str(root)], check=True)
    with open(root, "r+b") as f:
        for offset in (MARK, size - 4 * MiB):    # not all zeros: the stream has work
            f.seek(offset)
            f.write(os.urandom(2 * MiB))
    return root.read_bytes()


def wait_streaming(dev: str, data: bytes) -> None:
    """Wait until the root image's marked region is on disk: the stream is under way.

    The root partition of a one-partition layout starts at 1 MiB.
    """
    want = data[MARK:MARK + 2 * MiB]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(dev, "rb") as f:
            f.seek(MiB + MARK)
            if f.read(len(want)) == want:
                return
        time.sleep(0.05)
    raise AssertionError("the root image never reached the disk")


def old_disk(dev: str) -> tuple[bytes, bytes]:
    """Give the disk a recognisable old GPT and content; return its first and last MiB."""
    subprocess.run(["sgdisk", "-n", "1:2048:+8M", "-n", "2:0:0", dev], check=True,
                   capture_output=True)
    with open(dev, "r+b") as f:
        f.seek(MiB)
        f.write(b"\xa5" * MiB)
    return edges(dev)


def edges(dev: str) -> tuple[bytes, bytes]:
    with open(dev, "rb") as f:
        head = f.read(2 * MiB)
        f.seek(-MiB, os.SEEK_END)
        return head, f.read()


def assert_no_table(dev: str) -> None:
    table = read_table(dev)
    assert table.kind is None, f"{dev} still has a {table.kind} table"
    with open(dev, "rb") as f:
        head = f.read(MiB)
        f.seek(-MiB, os.SEEK_END)
        tail = f.read()
    assert head[510:512] != b"\x55\xaa" and b"EFI PART" not in head + tail


# --- 1. validate everything before the first write ----------------------------------------

BAD_INFO = [
    pytest.param({"os_hash_algo": "sha256", "os_hash_value": "ab" * 10}, "os_hash_value",
                 id="sha256-too-short"),
    pytest.param({"os_hash_algo": "sha512", "os_hash_value": "a" * 64}, "os_hash_value",
                 id="sha512-with-sha256-length"),
    pytest.param({"os_hash_algo": "sha256", "os_hash_value": SECRET}, "os_hash_value",
                 id="not-hex"),
    pytest.param({"os_hash_algo": "shake_128", "os_hash_value": "a" * 64}, "fixed digest",
                 id="shake_128"),
    pytest.param({"os_hash_algo": "shake_256", "os_hash_value": "a" * 128}, "fixed digest",
                 id="shake_256"),
    pytest.param({"image_request_authorization": "Bearer \u00e9t\u00e9" + SECRET},
                 "image_request_authorization", id="auth-non-ascii"),
    pytest.param({"image_request_authorization": "%%%not base64%%%" + SECRET},
                 "image_request_authorization", id="auth-not-base64"),
    pytest.param({"image_request_authorization":
                  base64.b64encode("Bearer \u2603".encode()).decode()},
                 "image_request_authorization", id="auth-decodes-to-non-ascii"),
    pytest.param({"image_request_authorization":
                  base64.b64encode(b"Bearer x\r\nX-Injected: 1").decode()},
                 "image_request_authorization", id="auth-decodes-to-two-headers"),
    pytest.param({"image_type": "partition", "root_mb": 1.5}, "root_mb", id="root-float"),
    pytest.param({"image_type": "partition", "root_mb": True}, "root_mb", id="root-bool"),
    pytest.param({"image_type": "partition", "root_mb": 16, "swap_mb": "8 MiB" + SECRET}, "swap_mb",
                 id="swap-text"),
    pytest.param({"image_type": "partition", "root_mb": 16, "ephemeral_mb": 2.25},
                 "ephemeral_mb", id="ephemeral-float"),
    pytest.param({"image_type": "partition", "root_mb": 16,
                  "deploy_boot_mode": SECRET}, "deploy_boot_mode", id="boot-mode"),
    pytest.param({"image_type": "partition", "root_mb": 16, "preserve_ephemeral": SECRET},
                 "preserve_ephemeral", id="preserve-not-bool"),
    pytest.param({"image_type": "partiton" + SECRET}, "image_type", id="image-type-typo"),
]


@pytest.mark.parametrize("extra,field", BAD_INFO)
@pytest.mark.parametrize("command", ["standby.prepare_image", "standby.cache_image",
                                     "write_image"])
def test_bad_image_info_is_a_400_before_network_or_disk(agent, server, make_loop, tmp_path,
                                                        extra, field, command):
    _, client = agent
    dev = make_loop(64 * MiB)
    before = old_disk(dev)
    image_info = {**info(server, gpt_image(tmp_path)), **extra}
    if command == "write_image":
        step = {"interface": "deploy", "step": "write_image",
                "args": {"image_info": image_info}}
        status, body = post(client, "deploy.execute_deploy_step",
                            {"step": step, "node": node_for(dev), "ports": []})
        assert status == 200, body
        assert body["command_status"] == "FAILED", body
        error = body["command_error"]
        assert (error["code"], error["type"]) == (400, "InvalidCommandParamsError"), error
        text = error["details"]
    else:
        status, body = post(client, command, {"image_info": image_info, "node": node_for(dev)})
        assert status == 400, body
        text = body["faultstring"]
    assert field in text
    assert SECRET not in text and "\u00e9" not in text
    assert server.log == []
    assert edges(dev) == before


def test_sizes_accept_integers_and_integral_numbers():
    from agent.imaging import image_info
    base = {"id": "x", "urls": ["http://127.0.0.1/x"], "os_hash_algo": "sha256",
            "os_hash_value": "a" * 64, "image_type": "partition"}
    spec = image_info.validate({**base, "root_mb": 16, "swap_mb": 8.0, "ephemeral_mb": "4"},
                               md5_allowed=False)
    assert spec.sizes_mb == {"root_mb": 16, "swap_mb": 8, "ephemeral_mb": 4}
    spec = image_info.validate({**base, "preserve_ephemeral": "false"}, md5_allowed=False)
    assert spec.preserve_ephemeral is False and spec.sizes_mb["root_mb"] == 0


# --- 2. partition images reach the network before the table changes -----------------------

def partition_params(server, data, dev, **extra):
    return {"image_info": info(server, data, image_type="partition", root_mb=24,
                               disk_label="msdos", **extra), "node": node_for(dev)}


@pytest.mark.parametrize("dead", ["image", "checksum"])
def test_dead_url_leaves_the_old_disk_untouched(agent, server, make_loop, tmp_path, dead):
    _, client = agent
    dev = make_loop(64 * MiB)
    before = old_disk(dev)
    params = partition_params(server, ext4_root(tmp_path), dev)
    if dead == "image":
        params["image_info"]["urls"] = [f"{server.url}/gone"]
    else:
        server.files["root.sha256"] = b"irrelevant"
        del params["image_info"]["os_hash_algo"], params["image_info"]["os_hash_value"]
        params["image_info"]["checksum"] = f"{server.url}/missing.sha256"
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "FAILED", body
    assert body["command_error"]["type"] == "ImageDownloadError"
    assert edges(dev) == before
    assert read_table(dev).kind == "gpt"


def test_failure_mid_download_leaves_no_partition_table(agent, server, make_loop, tmp_path):
    _, client = agent
    dev = make_loop(64 * MiB)
    old_disk(dev)
    data = ext4_root(tmp_path)
    params = partition_params(server, data, dev)
    server.drop_at = [9 * MiB + 17]
    server.serve_limit["img"] = 1        # the resume finds the image gone
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "FAILED", body
    assert "without a partition table" in body["command_error"]["details"]
    assert_no_table(dev)


def test_checksum_mismatch_on_a_partition_image_leaves_no_table(agent, server, make_loop,
                                                                 tmp_path):
    _, client = agent
    dev = make_loop(64 * MiB)
    params = partition_params(server, ext4_root(tmp_path), dev)
    params["image_info"]["os_hash_value"] = "1" * 64
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "FAILED", body
    assert body["command_error"]["type"] == "ImageChecksumError"
    assert_no_table(dev)


def test_no_table_while_the_root_streams_then_a_good_one(agent, server, make_loop, tmp_path):
    """What a kill mid-download would find: the disk as it is while the root streams."""
    _, client = agent
    dev = make_loop(96 * MiB)
    old_disk(dev)
    data = ext4_root(tmp_path, 48 * MiB)
    params = partition_params(server, data, dev, deploy_boot_mode="bios")
    params["image_info"]["root_mb"] = 56
    server.stall_at["img"] = STALL_AT
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        body=post(client, "standby.prepare_image", params)[1]))
    worker.start()
    try:
        assert server.stalled.wait(60), "the download never reached the stall point"
        wait_streaming(dev, data)
        assert_no_table(dev)
    finally:
        server.release.set()
        worker.join(120)
    assert not worker.is_alive()
    assert result["body"]["command_status"] == "SUCCEEDED", result["body"]
    table = read_table(dev)
    assert table.kind == "mbr" and table.ok
    root = max(table.partitions, key=lambda p: p.number)
    assert root.bootable
    with open(dev, "rb") as f:
        f.seek(root.start_bytes)
        assert f.read(len(data)) == data


# --- 4. "already written" means this image, these bytes, this disk ------------------------

def test_same_image_on_another_disk_is_written(agent, server, make_loop, tmp_path):
    _, client = agent
    first, second = make_loop(64 * MiB), make_loop(64 * MiB)
    data = gpt_image(tmp_path)
    params = {"image_info": info(server, data), "node": node_for(first)}
    assert post(client, "standby.prepare_image", params)[1]["command_status"] == "SUCCEEDED"
    params["node"] = node_for(second)
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "SUCCEEDED", body
    assert body["command_result"]["write"]["image_bytes"] == len(data)
    with open(second, "rb") as f:
        assert f.read(3 * MiB)[2 * MiB:] == data[2 * MiB:3 * MiB]


def test_same_image_on_another_disk_fails_when_the_server_is_gone(agent, server, make_loop,
                                                                  tmp_path):
    _, client = agent
    first, second = make_loop(64 * MiB), make_loop(64 * MiB)
    params = {"image_info": info(server, gpt_image(tmp_path)), "node": node_for(first)}
    assert post(client, "standby.prepare_image", params)[1]["command_status"] == "SUCCEEDED"
    del server.files["img"]
    params["node"] = node_for(second)
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "FAILED", body
    assert "404" in body["command_error"]["details"]


def test_same_id_with_other_bytes_is_written(agent, server, loop_disk, tmp_path):
    _, client = agent
    params = {"image_info": info(server, gpt_image(tmp_path, b"\x01" * MiB)),
              "node": node_for(loop_disk)}
    assert post(client, "standby.prepare_image", params)[1]["command_status"] == "SUCCEEDED"
    newer = gpt_image(tmp_path, b"\x02" * MiB)
    params["image_info"] = info(server, newer)          # same id, new checksum
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_result"]["write"]["image_bytes"] == len(newer), body
    with open(loop_disk, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(MiB) == b"\x02" * MiB


@pytest.mark.parametrize("how", ["overwritten", "erased"])
def test_disk_changed_since_is_written_again(agent, server, loop_disk, tmp_path, how):
    _, client = agent
    data = gpt_image(tmp_path)
    params = {"image_info": info(server, data), "node": node_for(loop_disk)}
    assert post(client, "standby.prepare_image", params)[1]["command_status"] == "SUCCEEDED"
    if how == "overwritten":
        with open(loop_disk, "r+b") as f:       # anything else writing the disk
            f.write(b"\x5a" * 4096)
    else:
        from agent.hardware.disks import Disk
        from agent.hardware.erase_metadata import erase_metadata
        erase_metadata(Disk(name=loop_disk, size=256 * MiB, kind="loop"))
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "SUCCEEDED", body
    assert body["command_result"]["write"]["image_bytes"] == len(data)
    assert read_table(loop_disk).ok


def test_a_retry_on_the_unchanged_disk_still_skips_the_download(agent, server, loop_disk,
                                                                tmp_path):
    _, client = agent
    params = {"image_info": info(server, gpt_image(tmp_path)), "node": node_for(loop_disk)}
    assert post(client, "standby.prepare_image", params)[1]["command_status"] == "SUCCEEDED"
    requests_before = len(server.log)
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "SUCCEEDED" and body["command_result"]["write"] is None
    assert len(server.log) == requests_before
