"""Cleaning driven by a real Ironic: automated, manual (erase_devices_express), and fast
track from cleaning into a deploy on one agent process.

Every test first asks the agent which disks it would erase and stops unless
the answer is exactly its own loop device (conftest.guard_erase).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import guard_erase
from tests.ironic.test_deploy import assert_clean_finish, deploy, whole_disk_info

pytestmark = requires_loop
MiB = harness.MiB
CLEAN_TIMEOUT_S = 240


@pytest.fixture
def dirty_disk(make_loop, tmp_path) -> str:
    """A loop disk holding a GPT disk image, as a previous tenant would leave it."""
    disk = make_loop(256 * MiB)
    image = harness.gpt_image(str(tmp_path / "old.img"), seed=b"previous tenant")
    with open(disk, "r+b") as f:
        f.write(image)
    assert harness.partitions(disk), "the dirty disk must start with a partition table"
    return disk


def assert_wiped(disk: str) -> None:
    assert harness.partitions(disk) == []
    assert harness.read_disk(disk, 512, 8) != b"EFI PART"


def test_automated_cleaning_on_provide(api, agent, make_node, dirty_disk, tmp_path):
    node = make_node(dirty_disk, automated_clean=True)
    guard_erase(api, node["uuid"], [dirty_disk], str(tmp_path))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()
    started = time.monotonic()
    api.provision(node["uuid"], "provide")
    done = api.wait_for(node["uuid"], "available", CLEAN_TIMEOUT_S)

    assert_clean_finish(done, "available")
    assert_wiped(dirty_disk)
    assert "erase_devices_metadata" in agent.log()
    print(f"automated cleaning: {time.monotonic() - started:.1f}s")


def test_manual_cleaning_erase_devices_express(api, agent, make_node, dirty_disk, tmp_path):
    node = make_node(dirty_disk)
    guard_erase(api, node["uuid"], [dirty_disk], str(tmp_path))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()
    started = time.monotonic()
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "deploy", "step": "erase_devices_express"}])
    done = api.wait_for(node["uuid"], "manageable", CLEAN_TIMEOUT_S)

    assert_clean_finish(done, "manageable")
    assert_wiped(dirty_disk)
    assert "erase_devices_express" in agent.log()
    print(f"manual cleaning (erase_devices_express): {time.monotonic() - started:.1f}s")


def test_fast_track_from_cleaning_into_deploy(api, images, agent, make_node, dirty_disk,
                                              tmp_path):
    data = harness.gpt_image(str(tmp_path / "ft.img"), seed=b"fast track")
    url, sha = images.add("fast-track.img", data)
    node = make_node(dirty_disk, driver_info={"fast_track": True})
    guard_erase(api, node["uuid"], [dirty_disk], str(tmp_path))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    # fast track needs the machine powered on with an agent that heartbeats
    api.power(node["uuid"], "power on")
    agent.start()
    pid = agent.proc.pid if agent.proc else None
    started = time.monotonic()
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "deploy", "step": "erase_devices_metadata"}])
    api.wait_for(node["uuid"], "manageable", CLEAN_TIMEOUT_S)
    assert_wiped(dirty_disk)
    api.provision(node["uuid"], "provide")
    api.wait_for(node["uuid"], "available", CLEAN_TIMEOUT_S)
    done, _ = deploy(api, node["uuid"], whole_disk_info(url, sha))

    assert_clean_finish(done, "active")
    assert harness.read_disk(dirty_disk, 2 * MiB, 2 * MiB) == data[2 * MiB:4 * MiB]
    # one boot of the ramdisk served both: same process, one lookup
    assert agent.alive() and agent.proc is not None and agent.proc.pid == pid
    assert agent.log().count("lookup found node") == 1
    print(f"fast track clean -> deploy: {time.monotonic() - started:.1f}s")
