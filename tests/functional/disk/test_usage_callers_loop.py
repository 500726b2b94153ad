"""The three callers of agent.disk.usage on real loop devices, under its one policy.

check_target (before an image write), reread.holders (why the kernel kept an
old table) and the erase guards must agree on who uses a disk: mounts, swap
and other processes count, udev's probes never do.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from agent.disk import blockdev, reread
from agent.errors import UnsafeDevice
from agent.hardware import erase
from agent.hardware.erase_base import EraseOptions
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import loop_disk
from tests.holders import described, holder

pytestmark = requires_loop
MiB = 1 << 20



def erase_refusal(dev: str) -> str:
    with pytest.raises(UnsafeDevice) as exc:
        erase.erase_devices_metadata([loop_disk(dev)], {}, EraseOptions())
    return exc.value.details


def test_check_target_refuses_a_disk_another_process_has_open(make_loop):
    dev = make_loop(16 * MiB)
    with holder(dev) as proc:
        who = described(proc)
        with pytest.raises(UnsafeDevice) as exc:
            blockdev.check_target(dev, allow_loop=True)
        assert exc.value.details == f"{dev} is in use: {dev} is open by process {who}"
    assert blockdev.check_target(dev, allow_loop=True) == 16 * MiB


def test_check_target_does_not_count_the_agents_own_descriptor(make_loop):
    dev = make_loop(16 * MiB)
    fd = os.open(dev, os.O_RDONLY)
    try:
        assert blockdev.check_target(dev, allow_loop=True) == 16 * MiB
    finally:
        os.close(fd)


def test_check_target_refuses_swap(make_loop):
    dev = make_loop(16 * MiB)
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    subprocess.run(["swapon", dev], check=True)
    try:
        with pytest.raises(UnsafeDevice) as exc:
            blockdev.check_target(dev, allow_loop=True)
        assert f"{dev} is in use as swap" in exc.value.details
        assert f"{dev} is in use as swap" in erase_refusal(dev)
    finally:
        subprocess.run(["swapoff", dev], check=True)


def test_every_caller_ignores_a_udev_probe_and_counts_anything_else(make_loop):
    dev = make_loop(16 * MiB)
    with holder(dev, "systemd-udevd"):
        assert blockdev.check_target(dev, allow_loop=True) == 16 * MiB
        assert reread.holders(dev) == []
        erase.erase_devices_metadata([loop_disk(dev)], {}, EraseOptions())
    with holder(dev) as proc:
        who = described(proc)
        assert reread.holders(dev) == [f"{dev} is open by process {who}"]
        assert f"{dev} is open by process {who}" in erase_refusal(dev)


def test_the_erase_guard_names_the_mount_point(make_loop, tmp_path):
    dev = make_loop(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        assert f"{dev} is mounted on {mnt}" in erase_refusal(dev)
        with pytest.raises(UnsafeDevice) as exc:
            blockdev.check_target(dev, allow_loop=True)
        assert exc.value.details == f"{dev} is in use: {dev} is mounted on {mnt}"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
