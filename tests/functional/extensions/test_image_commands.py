"""prepare_image, cache_image and the write_image deploy step through the API."""

from __future__ import annotations

import hashlib
import os
import subprocess
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


@pytest.fixture
def agent():
    cfg = config_mod.load(cmdline="", env={}, flags={
        "standalone": True, "include_loop_devices": True,
        "image_download_connection_retry_interval": 0.01,
        "image_download_connection_retries": 1, "disk_wait_attempts": 1})
    state = AgentState(cfg)
    runner = CommandRunner(load_extensions(state))
    return state, create_app(state, runner).test_client()


def gpt_image(tmp_path) -> bytes:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(path)], check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(b"\x78\x56\x34\x12")
        f.seek(2 * MiB)
        f.write(os.urandom(MiB))
    return path.read_bytes()


def post(client, name, params, wait=True):
    resp = client.post(f"/v1/commands/?wait={'true' if wait else 'false'}",
                       json={"name": name, "params": params})
    return resp.status_code, resp.get_json()


def info(server, data, **extra):
    server.files["img"] = data
    return {"id": "img-1", "urls": [f"{server.url}/img"], "os_hash_algo": "sha256",
            "os_hash_value": hashlib.sha256(data).hexdigest(), **extra}


def node_for(dev):
    return {"properties": {"root_device": {"name": dev}}}


def test_prepare_image_writes_and_records_uuids(agent, image_server, loop_disk, tmp_path):
    state, client = agent
    data = gpt_image(tmp_path)
    status, body = post(client, "standby.prepare_image",
                        {"image_info": info(image_server, data), "node": node_for(loop_disk)})
    assert status == 200, body
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    assert body["command_name"] == "prepare_image"
    result = body["command_result"]
    assert result["result"] == (f"prepare_image: image (img-1) written to device {loop_disk} "
                                "root_uuid=0x12345678")
    assert result["device_reason"]
    assert result["backup_gpt_relocated"] is True   # 8 MiB image on a 256 MiB disk
    with open(loop_disk, "rb") as f:
        disk = f.read(len(data))
    assert disk[2 * MiB:3 * MiB] == data[2 * MiB:3 * MiB]
    assert disk[:440] == data[:440]                    # boot code untouched
    table = read_table(loop_disk)
    assert table.ok and not table.backup_misplaced
    status, body = post(client, "standby.get_partition_uuids", {})
    assert body["command_result"] == {"root uuid": "0x12345678"}


def test_missing_urls_is_a_400_and_touches_nothing(agent, loop_disk):
    _, client = agent
    with open(loop_disk, "r+b") as f:
        f.write(b"\xaa" * 512)
    status, body = post(client, "standby.prepare_image",
                        {"image_info": {"id": "x", "os_hash_algo": "sha256",
                                        "os_hash_value": "0" * 64},
                         "node": node_for(loop_disk)})
    assert status == 400
    assert body["faultstring"] == ("Invalid command parameters: Image is missing 'urls' "
                                   "field.")
    with open(loop_disk, "rb") as f:
        assert f.read(512) == b"\xaa" * 512
    status, body = post(client, "standby.prepare_image",
                        {"image_info": {"id": "x", "urls": ["http://127.0.0.1:1/x"]}})
    assert status == 400 and "checksum is not available" in body["faultstring"]
    status, body = post(client, "standby.prepare_image",
                        {"image_info": {"id": "x", "urls": ["http://127.0.0.1:1/x"],
                                        "checksum": "abc"}})
    assert status == 400 and "hexadecimal" in body["faultstring"]


def test_write_image_step_result_shape(agent, image_server, loop_disk, tmp_path):
    _, client = agent
    data = gpt_image(tmp_path)
    step = {"interface": "deploy", "step": "write_image",
            "args": {"image_info": info(image_server, data), "configdrive": None}}
    status, body = post(client, "deploy.execute_deploy_step",
                        {"step": step, "node": node_for(loop_disk), "ports": [],
                         "deploy_version": None})
    assert status == 200 and body["command_status"] == "SUCCEEDED", body
    assert body["command_result"]["deploy_step"] == step
    assert body["command_result"]["deploy_result"]["result"].startswith(
        "prepare_image: image (img-1) written to device")


def test_write_image_step_with_bad_image_info_fails_the_step(agent, loop_disk):
    _, client = agent
    step = {"interface": "deploy", "step": "write_image",
            "args": {"image_info": {"id": "x", "urls": []}}}
    status, body = post(client, "deploy.execute_deploy_step",
                        {"step": step, "node": node_for(loop_disk), "ports": []})
    assert status == 200
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["code"] == 400
    assert "'urls' must be a list" in body["command_error"]["details"]


def test_deploy_steps_list_write_image(agent):
    _, client = agent
    status, body = post(client, "deploy.get_deploy_steps", {"node": {}, "ports": []})
    steps = [s for lst in body["command_result"]["deploy_steps"].values() for s in lst]
    assert "write_image" in [s["step"] for s in steps]
    assert "hardware_manager_version" in body["command_result"]


@pytest.mark.parametrize("verify", [False, True])
def test_qcow2_deploys_through_staging(agent, image_server, loop_disk, tmp_path, verify):
    _, client = agent
    qcow = tmp_path / "x.qcow2"
    raw = tmp_path / "x.raw"
    with open(raw, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(2 * MiB))
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(raw)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw),
                    str(qcow)], check=True, capture_output=True)
    status, body = post(client, "standby.prepare_image",
                        {"image_info": info(image_server, qcow.read_bytes(),
                                            disk_format="qcow2"),
                         "node": node_for(loop_disk), "verify_after_write": verify})
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    assert body["command_result"]["write"]["image_format"] == "qcow2"
    # the staged download is what can be read back; qemu-img's output has no digest to meet
    assert body["command_result"]["write"]["verified_after_write"] is verify
    with open(loop_disk, "rb") as f:
        disk = f.read(16 * MiB)
    assert disk[MiB:15 * MiB] == raw.read_bytes()[MiB:15 * MiB]
    assert read_table(loop_disk).ok


def test_declared_format_mismatch_is_refused_before_the_disk_is_touched(
        agent, image_server, loop_disk, tmp_path):
    _, client = agent
    qcow = tmp_path / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(qcow), "16M"], check=True,
                   capture_output=True)
    with open(loop_disk, "r+b") as f:
        f.write(b"\xbb" * 4096)
    status, body = post(client, "standby.prepare_image",
                        {"image_info": info(image_server, qcow.read_bytes(), disk_format="raw"),
                         "node": node_for(loop_disk)})
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "InvalidImage"
    assert "declared" in body["command_error"]["details"]
    with open(loop_disk, "rb") as f:
        assert f.read(4096) == b"\xbb" * 4096


def test_same_image_is_not_written_twice(agent, image_server, loop_disk, tmp_path):
    _, client = agent
    data = gpt_image(tmp_path)
    params = {"image_info": info(image_server, data), "node": node_for(loop_disk)}
    assert post(client, "standby.cache_image", params)[1]["command_status"] == "SUCCEEDED"
    requests_before = len(image_server.log)
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "SUCCEEDED"
    assert body["command_result"]["write"] is None
    assert len(image_server.log) == requests_before
    params["force"] = True
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_result"]["write"]["image_bytes"] == len(data)


def test_running_prepare_image_reports_progress(agent, image_server, loop_disk, tmp_path):
    _, client = agent
    data = gpt_image(tmp_path) + os.urandom(8 * MiB)
    image_server.throttle_s = 0.02
    status, body = post(client, "standby.prepare_image",
                        {"image_info": info(image_server, data), "node": node_for(loop_disk)},
                        wait=False)
    assert body["command_status"] == "RUNNING"
    seen = []
    while body["command_status"] == "RUNNING":
        if body.get("progress", {}).get("phase") == "write":
            seen.append(body["command_result"]["progress"]["done"])
        time.sleep(0.1)
        body = client.get(f"/v1/commands/{body['id']}").get_json()
    assert body["command_status"] == "SUCCEEDED", body
    assert len(set(seen)) >= 2 and seen == sorted(seen)


def _partition_bytes(dev: str, part) -> bytes:
    with open(dev, "rb") as f:
        f.seek(part.start_bytes)
        return f.read(part.size_bytes)


def test_whole_disk_with_json_configdrive(agent, image_server, loop_disk, tmp_path):
    from agent.imaging.configdrive_build import iso_files, iso_label
    _, client = agent
    data = gpt_image(tmp_path)
    meta = {"uuid": "7b1d5c0e", "hostname": "deployed-by-test"}
    drive = {"meta_data": meta, "user_data": "#cloud-config\n",
             "network_data": {"links": []}}
    status, body = post(client, "standby.prepare_image",
                        {"image_info": info(image_server, data), "configdrive": drive,
                         "node": node_for(loop_disk)})
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    placed = body["command_result"]["configdrive"]
    assert placed["created"] is True and placed["filesystem"] == "iso9660"
    table = read_table(loop_disk)
    part = next(p for p in table.partitions if p.name == "config-v2")
    iso = _partition_bytes(loop_disk, part)
    assert iso_label(iso).lower() == "config-2"
    files = iso_files(iso[:placed["size"]])
    import json
    assert json.loads(files["openstack/latest/meta_data.json"]) == meta
    assert files["openstack/latest/user_data"] == b"#cloud-config\n"


def test_partition_image_uefi(agent, image_server, make_loop, tmp_path):
    _, client = agent
    loop_disk = make_loop(700 * MiB)      # the ESP alone is 550 MiB
    root = tmp_path / "root.ext4"
    with open(root, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-U", "8a4f2c1e-0b7e-4d37-9c52-3e0f6f0a1b2c",
                    str(root)], check=True)
    params = {"image_info": info(image_server, root.read_bytes(), image_type="partition",
                                 root_mb=32, deploy_boot_mode="uefi", disk_label="gpt"),
              "node": node_for(loop_disk)}
    status, body = post(client, "standby.prepare_image", params)
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    status, body = post(client, "standby.get_partition_uuids", {})
    uuids = body["command_result"]
    assert uuids["root uuid"] == "8a4f2c1e-0b7e-4d37-9c52-3e0f6f0a1b2c"
    assert uuids["efi system partition uuid"]
    assert set(uuids["partitions"]) == {"root", "efi system partition"}


def test_bad_partition_sizes_fail_before_the_disk_is_touched(agent, image_server, loop_disk):
    _, client = agent
    with open(loop_disk, "r+b") as f:
        f.write(b"\xcc" * 4096)
    params = {"image_info": info(image_server, b"x" * 4096, image_type="partition",
                                 root_mb=-5), "node": node_for(loop_disk)}
    status, body = post(client, "standby.prepare_image", params)
    assert status == 400, body
    assert "root_mb" in body["faultstring"] and "-5" not in body["faultstring"]
    assert image_server.log == []
    with open(loop_disk, "rb") as f:
        assert f.read(4096) == b"\xcc" * 4096


@pytest.mark.parametrize("kind", ["deploy", "service", "clean"])
def test_step_commands_check_parameter_types_in_the_request(agent, kind):
    _, client = agent
    status, body = post(client, f"{kind}.execute_{kind}_step",
                        {"step": "write_image", "node": {}, "ports": []})
    assert status == 400 and "'step' must be an object" in body["faultstring"]
    status, body = post(client, f"{kind}.execute_{kind}_step",
                        {"step": {"step": "x", "interface": "deploy"},
                         f"{kind}_version": "1.0"})
    assert status == 400 and f"'{kind}_version' must be an object" in body["faultstring"]
    status, body = post(client, f"{kind}.get_{kind}_steps", {"node": [], "ports": []})
    assert status == 400 and "'node' must be an object" in body["faultstring"]


def test_inject_files_is_listed_and_runs_as_a_deploy_and_service_step(agent, loop_disk):
    # a disk with one ext4 partition: the step must find it, write, and unmount
    subprocess.run(["sgdisk", "-Z", loop_disk], capture_output=True)
    subprocess.run(["sgdisk", "-n", "1:2048:0", loop_disk], check=True, capture_output=True)
    subprocess.run(["partx", "-a", loop_disk], capture_output=True)
    part = f"{loop_disk}p1"
    subprocess.run(["mkfs.ext4", "-q", "-F", part], check=True, capture_output=True)
    _, client = agent
    for kind in ("deploy", "service"):
        status, body = post(client, f"{kind}.get_{kind}_steps", {"node": {}, "ports": []})
        steps = {s["step"]: s for lst in body["command_result"][f"{kind}_steps"].values()
                 for s in lst}
        assert steps["inject_files"]["priority"] == 0
        assert steps["inject_files"]["interface"] == "deploy"
    node = node_for(loop_disk)
    node.setdefault("properties", {})["inject_files"] = [
        {"path": "/etc/from-node", "partition": 1, "content": "bm9kZQo="}]
    step = {"interface": "deploy", "step": "inject_files",
            "args": {"files": [{"path": "/etc/hostname", "partition": 1,
                                "content": "aW5qZWN0ZWQK", "mode": 0o600}]}}
    status, body = post(client, "deploy.execute_deploy_step",
                        {"step": step, "node": node, "ports": []})
    assert status == 200 and body["command_status"] == "SUCCEEDED", body
    assert body["command_result"]["deploy_result"]["result"].startswith(
        "inject_files: wrote 2 file(s)")
    out = subprocess.run(["debugfs", "-R", "cat /etc/hostname", part], check=True,
                         capture_output=True, text=True).stdout
    assert out == "injected\n"
    out = subprocess.run(["debugfs", "-R", "cat /etc/from-node", part], check=True,
                         capture_output=True, text=True).stdout
    assert out == "node\n"
    subprocess.run(["partx", "-d", loop_disk], capture_output=True)
