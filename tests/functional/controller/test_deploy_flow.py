"""A whole deploy onto a loop device, driven the conductor's way through a booted agent."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from agent.driver.conductor import Conductor, DeployPlan, agent_client, endpoint_from_controller
from agent.driver.request import build_image_info
from agent.driver.standin import StandinController
from agent.errors import DeployFailed
from tests.conftest import requires_loop
from tests.functional.controller.agent_proc import ROOT, TESTEXT, AgentProcess

pytestmark = requires_loop
MiB = 1 << 20


def payload(data: bytes) -> bytes:
    # the config drive partition rewrites the partition tables; the payload stays
    return data[2 * MiB:4 * MiB]


def on_disk(disk: str) -> bytes:
    with open(disk, "rb") as f:
        f.seek(2 * MiB)
        return f.read(2 * MiB)


def gpt_image(tmp_path, name: str, signature: bytes) -> bytes:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(path)], check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(signature)
        f.seek(2 * MiB)
        f.write(os.urandom(2 * MiB))
    return path.read_bytes()


@pytest.fixture
def deploy_env(tmp_path, make_loop, image_server):
    disk = make_loop(128 * MiB)
    controller = StandinController(config={"heartbeat_timeout": 100}).start()
    node = controller.add_node({"properties": {"root_device": {"name": disk}},
                                "instance_info": {"image_source": "img-a"}}, macs=None)
    agent = AgentProcess(tmp_path, controller.url, flags=["--include-loop-devices"]).start()
    yield {"disk": disk, "controller": controller, "node": node, "agent": agent,
           "images": image_server, "tmp": tmp_path}
    agent.stop()
    controller.stop()


def test_conductor_deploys_through_the_controller(deploy_env):
    env = deploy_env
    data = gpt_image(env["tmp"], "a.img", b"\x78\x56\x34\x12")
    env["images"].files["a.img"] = data
    env["images"].throttle_s = 0.05  # slow enough that a poll sees the write running
    events: list[tuple[str, object]] = []

    found = endpoint_from_controller(env["controller"].url, env["node"].uuid, timeout=60,
                                     poll=0.1, ca_dir=str(env["tmp"]))
    assert found.url == env["agent"].url and found.token == env["node"].token
    assert isinstance(found.verify, str) and open(found.verify).read().startswith("-----BEGIN")
    client = agent_client(found.url, found.token, found.verify)
    info = build_image_info(f"{env['images'].url}/a.img",
                            "sha256:" + hashlib.sha256(data).hexdigest(),
                            node_uuid=env["node"].uuid)
    configdrive = {"meta_data": {"uuid": env["node"].uuid, "hostname": "node-a"}}
    report = Conductor(client, poll_interval=0.2,
                       on_event=lambda kind, d: events.append((kind, d))).deploy(
        DeployPlan(image_info=info, configdrive=configdrive, node=found.node, power_off=False))

    assert on_disk(env["disk"]) == payload(data)
    assert report.partition_uuids["root uuid"] == "0x12345678"
    assert report.deploy_result["result"].startswith(
        f"prepare_image: image (a.img) written to device {env['disk']}")
    assert report.bootloader.startswith("skipped")
    assert report.power == "synced, left running"
    names = [c["command_name"] for c in client.list()]
    assert names == ["get_deploy_steps", "execute_deploy_step", "get_partition_uuids",
                     "sync"]
    progress = [d for kind, d in events if kind == "progress"]
    assert progress and all(p["unit"] == "bytes" for p in progress)
    messages = [d for kind, d in events if kind == "message"]
    assert "deploy step write_image started" in messages

    # not a ramdisk: the power-off is refused with the reason, and nothing happens
    with pytest.raises(DeployFailed) as err:
        Conductor(client, poll_interval=0.1).power_off()
    assert "not running from a deploy ramdisk" in err.value.details
    assert env["agent"].proc.poll() is None


def test_cli_uefi_deploy_directly_with_pinned_certificate(deploy_env):
    env = deploy_env
    beat = env["controller"].wait_for_heartbeats(env["node"].uuid, timeout=60)[0]
    ca = env["tmp"] / "agent.crt"
    ca.write_text(beat["json"]["agent_verify_ca"])
    # a GPT disk image has no MBR signature: its root "uuid" is 0x00000000
    data = gpt_image(env["tmp"], "b.img", b"\x00\x00\x00\x00")
    env["images"].files["b.img"] = data
    argv = [sys.executable, "-m", "agent.cli", "deploy", "--agent", env["agent"].url,
            "--token", env["node"].token, "--ca", str(ca),
            "--image", f"{env['images'].url}/b.img",
            "--checksum", "sha256:" + hashlib.sha256(data).hexdigest(),
            "--root-device", json.dumps({"name": env["disk"]}),
            "--configdrive", json.dumps({"meta_data": {"hostname": "node-b"}}),
            "--boot-mode", "uefi", "--no-power-off", "--poll", "0.2", "--wait", "60"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTEXT])))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["partition_uuids"] == {"root uuid": "0x00000000"}
    # UEFI whole-disk deploys run install_bootloader and poll it (reference §7)
    assert report["bootloader"] == "installed (whole-disk image in UEFI mode)"
    assert report["power"] == "synced, left running"
    assert "deploy: installing the bootloader" in out.stderr
    assert "deploy: deploy step write_image started" in out.stderr
    assert on_disk(env["disk"]) == payload(data)

    # a wrong token is an API error with the agent's faultstring, and exit code 2
    bad = subprocess.run(argv[:7] + ["not-the-token"] + argv[8:], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert bad.returncode == 2
    assert "401 Unauthorized: Token invalid." in bad.stderr
