"""The conductor-like driver's clean steps and its software-RAID install_bootloader rule."""

from __future__ import annotations

import json
import os

import pytest

from agent import config as config_mod
from agent.driver.conductor import Conductor, agent_client
from agent.driver.request import bootloader_params, software_raid
from agent.errors import DeployFailed
from agent.runtime import Runtime
from tests.functional.controller.agent_proc import free_port

EXAMPLE_MANAGER = os.path.join(os.path.dirname(__file__), "..", "..", "plugins",
                               "example_manager")
RAID = {"logical_disks": [{"size_gb": "MAX", "raid_level": "1", "controller": "software",
                           "volume_name": "root", "is_root_volume": True}]}
UUIDS = {"root uuid": "0x0000abcd", "efi system partition uuid": "ESP-UUID",
         "PReP Boot partition uuid": None}
WHOLE_DISK = {"image_type": "whole-disk-image"}


@pytest.fixture
def agent(monkeypatch):
    # a hardware manager with a harmless clean step (it writes a stamp file)
    monkeypatch.syspath_prepend(os.path.abspath(EXAMPLE_MANAGER))
    monkeypatch.delenv("EXAMPLE_HWM_DISABLED", raising=False)
    cfg = config_mod.load(read_proc=False, env={}, flags={
        "standalone": True, "listen_host": "127.0.0.1", "listen_port": free_port(),
        "agent_token": "t" * 43})
    runtime = Runtime(cfg)
    server = runtime.start_api()
    yield agent_client(f"http://127.0.0.1:{server.port}", "t" * 43, True)
    runtime.close()


def test_a_clean_step_runs_as_the_conductor_runs_it_and_returns_clean_result(agent, tmp_path):
    stamp = tmp_path / "stamp.json"
    step = {"step": "example_stamp", "interface": "deploy", "args": {"path": str(stamp)}}
    result = Conductor(agent, poll_interval=0.05).clean_step({"uuid": "n-1"}, step)
    assert result == {"stamped": str(stamp)}
    assert json.loads(stamp.read_text()) == {"node": "n-1", "ports": 0}
    commands = agent.list()
    assert [c["command_name"] for c in commands] == ["get_clean_steps", "execute_clean_step"]


def test_a_clean_step_the_agent_does_not_offer_is_refused_before_running(agent):
    step = {"step": "create_nothing", "interface": "raid", "args": {}}
    with pytest.raises(DeployFailed, match="does not offer clean step create_nothing"):
        Conductor(agent, poll_interval=0.05).clean_step({"uuid": "n-1"}, step)
    assert [c["command_name"] for c in agent.list()] == ["get_clean_steps"]


def test_a_failed_clean_step_fails_with_its_details(agent):
    # the path is a directory: the step raises, and the driver says so
    step = {"step": "example_stamp", "interface": "deploy", "args": {"path": "/"}}
    with pytest.raises(DeployFailed, match="clean step example_stamp failed"):
        Conductor(agent, poll_interval=0.05).clean_step({"uuid": "n-1"}, step)


def test_software_raid_is_read_from_target_raid_config_only():
    assert software_raid({"target_raid_config": RAID})
    assert not software_raid({"target_raid_config": {"logical_disks": [
        {"size_gb": 10, "raid_level": "1", "controller": "hw-ctl-0"}]}})
    assert not software_raid({"target_raid_config": {}})
    assert not software_raid({"driver_internal_info": {"target_raid_config": RAID}})
    assert not software_raid(None)


@pytest.mark.parametrize("mode", ["bios", "uefi"])
def test_software_raid_installs_the_bootloader_with_the_images_root_uuid(mode):
    node = {"target_raid_config": RAID, "instance_info": {"image_rootfs_uuid": "ROOT-FS"}}
    why, params = bootloader_params(node, WHOLE_DISK, mode, UUIDS)
    assert why == "software RAID"
    # what Ironic 39 sends for a whole-disk image on software RAID
    assert params == {"root_uuid": "ROOT-FS", "efi_system_part_uuid": None,
                      "prep_boot_part_uuid": None, "target_boot_mode": mode}


def test_software_raid_without_image_rootfs_uuid_falls_back_to_the_agents_root():
    why, params = bootloader_params({"target_raid_config": RAID}, {"image_type": "partition"},
                                    "uefi", UUIDS)
    assert why == "software RAID"
    assert params["root_uuid"] == "0x0000abcd"
    assert params["efi_system_part_uuid"] == "ESP-UUID"


def test_without_software_raid_a_bios_whole_disk_deploy_skips_the_bootloader():
    assert bootloader_params({}, WHOLE_DISK, "bios", UUIDS) == (None, {})
    why, params = bootloader_params({}, WHOLE_DISK, "uefi", UUIDS)
    assert why == "whole-disk image in UEFI mode"
    assert params["root_uuid"] == "0x0000abcd"
