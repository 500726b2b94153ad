"""Software RAID steps driven by a real Ironic 39 (``raid_interface=agent``).

This host's kernel has no md driver, so no array is created here: the tier
proves that Ironic sees and calls the agent's ``raid`` steps, that a
create_configuration the agent refuses fails with the agent's reason and
leaves the disks untouched, and that delete_configuration removes stale
RAID holders and runs Ironic's post-step hook.  Every other disk the agent
sees goes into skip_block_devices first (conftest.guard_erase).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import guard_erase
from tests.ironic.test_deploy import assert_clean_finish
from tests.unit.hardware.raid import md_superblock

pytestmark = requires_loop
MiB = harness.MiB
CLEAN_TIMEOUT_S = 240


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def holder_disk(make_loop) -> str:
    """A loop disk laid out as a RAID member: a GPT with a Linux RAID partition carrying a
    real md 1.2 superblock (written directly: no md driver here)."""
    disk = make_loop(256 * MiB)
    _sh("sgdisk", "-n", "1:2048:+128M", "-t", "1:FD00", disk)
    _sh("partx", "-a", disk)
    md_superblock.write(f"{disk}p1", 128 * MiB, raid_disks=2, name="any:root")
    assert "raid1" in _sh("mdadm", "--examine", f"{disk}p1")
    _sh("partx", "-d", disk)
    return disk


def _manageable(api, agent, node: dict) -> None:
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()


def test_delete_configuration_runs_and_clears_the_disk(api, agent, make_node, holder_disk,
                                                      tmp_path):
    node = make_node(holder_disk, raid_interface="agent")
    guard_erase(api, node["uuid"], [holder_disk], str(tmp_path))
    _manageable(api, agent, node)
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "raid", "step": "delete_configuration"}])
    done = api.wait_for(node["uuid"], "manageable", CLEAN_TIMEOUT_S)

    assert_clean_finish(done, "manageable")
    # AgentRAID._delete_configuration_final ran: raid_config empty, root_device hint gone
    assert done["raid_config"] == {}
    assert "root_device" not in done["properties"]
    assert harness.partitions(holder_disk) == []
    assert harness.read_disk(holder_disk, 512, 8) != b"EFI PART"
    assert harness.read_disk(holder_disk, MiB + 4096, 4) == b"\0\0\0\0"
    assert "delete_configuration" in agent.log()


def test_raid_steps_listed_and_create_matching_no_disk_fails_with_the_agents_reason(
        api, agent, make_node, make_loop, tmp_path):
    disk = make_loop(256 * MiB)
    image = harness.gpt_image(str(tmp_path / "old.img"), seed=b"keep me")
    with open(disk, "r+b") as f:
        f.write(image)
    node = make_node(disk, raid_interface="agent")
    guard_erase(api, node["uuid"], [disk], str(tmp_path))
    api.request("PUT", f"/v1/nodes/{node['uuid']}/states/raid", json={"logical_disks": [
        {"size_gb": "MAX", "raid_level": "1", "controller": "software",
         "volume_name": "root", "is_root_volume": True,
         "physical_disks": [{"serial": "no-such-serial-1"}, {"serial": "no-such-serial-2"}]}]})
    _manageable(api, agent, node)
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "raid", "step": "create_configuration"}])
    failed = api.wait_for(node["uuid"], "clean failed", CLEAN_TIMEOUT_S)

    # Ironic's cached copy of the agent's clean steps (kept after a failed clean)
    cached = failed["driver_internal_info"]["agent_cached_clean_steps"]
    raid = {s["step"]: s for s in cached["raid"]}
    assert set(raid) == {"delete_configuration", "create_configuration"}
    assert all(s["priority"] == 0 and s["abortable"] is False for s in raid.values())
    assert set(raid["create_configuration"]["argsinfo"]) == {"create_root_volume",
                                                             "create_nonroot_volumes"}
    # the agent built from Ironic's filtered copy
    assert failed["driver_internal_info"]["target_raid_config"]["logical_disks"]
    error = failed["last_error"] or ""
    assert "physical_disks entry 1 matches none of the" in error, error
    assert "no-such-serial" not in error
    assert failed["raid_config"] == {}
    with open(disk, "rb") as f:
        assert f.read(len(image)) == image
    assert os.path.exists(disk)
