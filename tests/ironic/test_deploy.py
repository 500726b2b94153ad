"""Deploys driven by a real Ironic: whole-disk raw and qcow2, partition images, re-imaging
as a service step, undeploy, and a failed deploy whose logs Ironic keeps."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import to_available

pytestmark = requires_loop
MiB = harness.MiB
DEPLOY_TIMEOUT_S = 240


def whole_disk_info(url: str, sha256: str, disk_format: str = "raw") -> dict:
    return {"image_source": url, "image_os_hash_algo": "sha256", "image_os_hash_value": sha256,
            "image_disk_format": disk_format}


def deploy(api, node_uuid: str, instance_info: dict, configdrive=None,
           timeout: float = DEPLOY_TIMEOUT_S) -> tuple[dict, float]:
    api.patch_node(node_uuid, **{f"instance_info/{k}": v for k, v in instance_info.items()})
    started = time.monotonic()
    body = {"configdrive": configdrive} if configdrive is not None else {}
    api.provision(node_uuid, "active", **body)
    node = api.wait_for(node_uuid, "active", timeout)
    return node, time.monotonic() - started


def assert_clean_finish(node: dict, state: str) -> None:
    assert node["provision_state"] == state
    assert node["last_error"] is None, node["last_error"]
    assert node["target_provision_state"] is None


@pytest.fixture
def disk(make_loop) -> str:
    return make_loop(512 * MiB)


def test_whole_disk_raw_with_json_config_drive(api, images, agent, make_node, disk, tmp_path):
    data = harness.gpt_image(str(tmp_path / "raw.img"), seed=b"raw-whole-disk")
    url, sha = images.add("raw.img", data)
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.start()
    hostname = "ironic-tier-raw"
    configdrive = {"meta_data": {"hostname": hostname, "uuid": node["uuid"]},
                   "user_data": "#!/bin/sh\necho hello\n",
                   "network_data": {"links": [], "networks": [], "services": []}}
    done, seconds = deploy(api, node["uuid"], whole_disk_info(url, sha), configdrive)

    assert_clean_finish(done, "active")
    # the image's payload partition is on the disk, byte for byte
    assert harness.read_disk(disk, 2 * MiB, 2 * MiB) == data[2 * MiB:4 * MiB]
    # Ironic built the ISO from our JSON and the agent wrote it to a config-2 partition
    meta = harness.config_drive_meta(disk)
    assert meta["hostname"] == hostname and meta["uuid"] == node["uuid"]
    print(f"whole-disk raw deploy: {seconds:.1f}s from 'active' requested to active")


def test_qcow2_whole_disk(api, images, agent, make_node, disk, tmp_path):
    raw = tmp_path / "q.raw"
    data = harness.gpt_image(str(raw), seed=b"qcow2-whole-disk")
    url, sha = images.add("q.qcow2", harness.qcow2_of(str(raw), str(tmp_path / "q.qcow2")))
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.start()
    done, seconds = deploy(api, node["uuid"], whole_disk_info(url, sha, "qcow2"))

    assert_clean_finish(done, "active")
    assert harness.read_disk(disk, 0, len(data))[2 * MiB:4 * MiB] == data[2 * MiB:4 * MiB]
    assert harness.read_disk(disk, 512, 8) == b"EFI PART"
    print(f"qcow2 deploy: {seconds:.1f}s")


def test_failed_deploy_bad_checksum_keeps_the_agents_logs(api, images, agent, make_node, disk,
                                                          tmp_path, ironic):
    data = harness.gpt_image(str(tmp_path / "bad.img"), seed=b"bad-checksum")
    url, _ = images.add("bad.img", data)
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.start()
    api.patch_node(node["uuid"], **{f"instance_info/{k}": v for k, v in
                                    whole_disk_info(url, "0" * 64).items()})
    api.provision(node["uuid"], "active")
    failed = api.wait_for(node["uuid"], "deploy failed", DEPLOY_TIMEOUT_S)

    assert failed["provision_state"] == "deploy failed"
    assert "checksum" in (failed["last_error"] or "").lower() or "sha256" in (
        failed["last_error"] or "").lower(), failed["last_error"]
    # nothing bootable was left behind: no partition table at either end
    assert harness.read_disk(disk, 512, 8) != b"EFI PART"
    assert harness.read_disk(disk, 510, 2) != b"\x55\xaa"
    # Ironic asked the agent for its logs and stored them ([agent]deploy_logs_collect)
    logs_dir = ironic.options["agent"]["deploy_logs_local_path"]
    kept = harness.wait_until(
        lambda: [f for f in os.listdir(logs_dir) if f.startswith(node["uuid"])], 60,
        "Ironic to store the agent's deploy logs")
    members = harness.tar_members(os.path.join(logs_dir, kept[0]))
    # the agent's own log, with the failure in it, and the system's
    assert "sha256 of the downloaded image" in members["deploy-agent.log"].decode()
    assert {"journal", "dmesg", "lsblk"} <= set(members), sorted(members)


def deployed_node(api, images, agent, make_node, disk, tmp_path, seed: bytes) -> tuple[dict, bytes]:
    data = harness.gpt_image(str(tmp_path / "first.img"), seed=seed)
    url, sha = images.add(f"{seed.decode()}.img", data)
    node = make_node(disk)
    to_available(api, node["uuid"])
    agent.start()
    done, _ = deploy(api, node["uuid"], whole_disk_info(url, sha))
    assert_clean_finish(done, "active")
    return done, data


def test_undeploy_with_cleaning_wipes_the_disk(api, images, agent, make_node, disk, tmp_path):
    from tests.ironic.conftest import guard_erase

    node, _ = deployed_node(api, images, agent, make_node, disk, tmp_path, b"undeploy")
    assert harness.read_disk(disk, 512, 8) == b"EFI PART"
    guard_erase(api, node["uuid"], [disk], str(tmp_path))
    api.patch_node(node["uuid"], automated_clean=True)
    # the OS would power off and netboot the ramdisk again: a new agent process
    agent.restart()
    started = time.monotonic()
    api.provision(node["uuid"], "deleted")
    done = api.wait_for(node["uuid"], "available", DEPLOY_TIMEOUT_S)

    assert_clean_finish(done, "available")
    assert done["instance_info"] == {} or "image_source" not in done["instance_info"]
    # erase_devices_metadata ran: no partition table left at either end
    assert harness.partitions(disk) == []
    assert harness.read_disk(disk, 512, 8) != b"EFI PART"
    size = os.path.getsize(disk) if not disk.startswith("/dev/") else int(
        open(f"/sys/class/block/{os.path.basename(disk)}/size").read()) * 512
    assert harness.read_disk(disk, size - 512, 8) != b"EFI PART"
    print(f"undeploy with cleaning: {time.monotonic() - started:.1f}s")


def test_service_step_reimages_an_active_node(api, images, agent, make_node, disk, tmp_path):
    node, _ = deployed_node(api, images, agent, make_node, disk, tmp_path, b"service-a")
    second = harness.gpt_image(str(tmp_path / "second.img"), seed=b"service-b")
    url, sha = images.add("service-b.img", second)
    agent.restart()
    image_info = {"id": "service-b", "urls": [url], "disk_format": "raw",
                  "os_hash_algo": "sha256", "os_hash_value": sha, "node_uuid": node["uuid"]}
    started = time.monotonic()
    api.provision(node["uuid"], "service", service_steps=[
        {"interface": "deploy", "step": "write_image", "args": {"image_info": image_info}}])
    done = api.wait_for(node["uuid"], "active", DEPLOY_TIMEOUT_S)

    assert_clean_finish(done, "active")
    assert harness.read_disk(disk, 2 * MiB, 2 * MiB) == second[2 * MiB:4 * MiB]
    print(f"service step write_image: {time.monotonic() - started:.1f}s")
