"""The erase guards on real loop devices: shared-SAN, mounted, open, held, read-only.

A refused run must leave every disk exactly as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.errors import UnsafeDevice
from agent.hardware import erase
from agent.hardware.erase_base import EraseOptions
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import (
    MIB,
    blkid_finds,
    expose,
    loop_disk,
    part,
    sh,
    signatures,
)

pytestmark = requires_loop
VMFS = "AA31E02A-400F-11DB-9590-000C2911D1B8"


def metadata(*devs: str, guard_shared: bool = True, **opts) -> dict:
    return erase.erase_devices_metadata([loop_disk(d) for d in devs], {},
                                        EraseOptions(**opts), guard_shared=guard_shared)


def refused(*devs: str, **kw) -> str:
    with pytest.raises(UnsafeDevice) as exc:
        metadata(*devs, **kw)
    assert "nothing was written" in exc.value.details
    return exc.value.details


def test_vmfs_partition_type_is_refused_and_nothing_is_touched(make_loop):
    good = make_loop(16 * MIB)
    san = make_loop(32 * MIB)
    sh("sgdisk", "-n", "1:2048:+8M", good)
    sh("sgdisk", "-n", "1:2048:+16M", "-t", f"1:{VMFS}", san)
    before = (signatures(good), signatures(san))
    details = refused(good, san)
    assert f"partition 1 of {san} has the VMFS partition type {VMFS}" in details
    assert (signatures(good), signatures(san)) == before      # both GPTs untouched


def test_vmfs_signature_inside_an_unexposed_partition_is_refused(make_loop):
    dev = make_loop(32 * MIB)
    sh("sgdisk", "-n", "1:2048:+16M", dev)                  # an ordinary Linux type
    with open(dev, "r+b") as f:                              # VMFS volume magic at +1 MiB
        f.seek(MIB + MIB)
        f.write(b"\x0d\xd0\x01\xc0")
    details = refused(dev)
    assert f"{dev} partition 1 carries a VMFS signature (VMFS_volume_member)" in details


def test_operator_may_disable_the_shared_filesystem_guard(make_loop):
    dev = make_loop(32 * MIB)
    sh("sgdisk", "-n", "1:2048:+16M", "-t", f"1:{VMFS}", dev)
    metadata(dev, guard_shared=False)
    assert signatures(dev) == ""


@pytest.fixture
def mounted(tmp_path):
    mounts = []

    def mount(device: str) -> str:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        sh("mount", "-t", "ext4", device, str(target))
        mounts.append(str(target))
        return str(target)
    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", target], capture_output=True)


def test_mounted_disk_is_refused(make_loop, mounted):
    dev = make_loop(32 * MIB)
    sh("mkfs.ext4", "-q", "-F", dev)
    mounted(dev)
    assert f"{dev} is mounted" in refused(dev)
    assert "ext4" in blkid_finds(dev)


def test_mounted_partition_is_refused(make_loop, mounted):
    dev = make_loop(32 * MIB)
    sh("sgdisk", "-n", "1:2048:+16M", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    mounted(part(dev, 1))
    assert f"{part(dev, 1)} is mounted" in refused(dev)


def test_disk_open_by_a_process_is_refused(make_loop):
    dev = make_loop(16 * MIB)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "print('ready', flush=True); time.sleep(120)", dev],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        details = refused(dev)
        assert f"{dev} is open by process {holder.pid} (" in details
    finally:
        holder.kill()
        holder.wait()
    metadata(dev)                                            # free again: erased


def test_read_only_disk_is_refused_or_skipped(make_loop):
    dev = make_loop(16 * MIB)
    sh("sgdisk", "-n", "1:2048:+8M", dev)
    sh("blockdev", "--setro", dev)
    try:
        assert f"{dev} is read-only" in refused(dev)
        result = metadata(dev, skip_read_only=True)
        assert result == {"erased": {}, "skipped": {dev: "read-only (agent_erase_skip_read_only)"}}
        assert "gpt" in signatures(dev)
    finally:
        sh("blockdev", "--setrw", dev)
    assert os.path.exists(dev)
