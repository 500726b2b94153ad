"""wipe_special_filesystems on a real VMFS-typed loop disk, through the erase path.

The guard the erase uses is the one options_from_node resolves, as the
generic manager passes it (``guard_shared=options.guard_shared``).
"""

from __future__ import annotations

import pytest

from agent.errors import UnsafeDevice
from agent.hardware import erase
from agent.hardware.erase_base import options_from_node
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import MIB, loop_disk, sh, signatures

pytestmark = requires_loop
VMFS = "AA31E02A-400F-11DB-9590-000C2911D1B8"


def metadata(dev: str, node: dict, *, ramdisk_guard: bool) -> dict:
    options = options_from_node(node, guard_shared=ramdisk_guard)
    return erase.erase_devices_metadata([loop_disk(dev)], node, options,
                                        guard_shared=options.guard_shared)


def vmfs_disk(make_loop) -> str:
    dev = make_loop(32 * MIB)
    sh("sgdisk", "-n", "1:2048:+16M", "-t", f"1:{VMFS}", dev)
    return dev


def test_node_allows_wiping_a_guarded_vmfs_disk(make_loop):
    dev = vmfs_disk(make_loop)
    assert "gpt" in signatures(dev)
    with pytest.raises(UnsafeDevice, match="VMFS"):
        metadata(dev, {}, ramdisk_guard=True)
    node = {"driver_info": {"wipe_special_filesystems": True}}
    result = metadata(dev, node, ramdisk_guard=True)
    assert list(result["erased"]) == [dev]
    assert "gpt" not in signatures(dev)


def test_node_keeps_the_guard_where_the_ramdisk_dropped_it(make_loop):
    dev = vmfs_disk(make_loop)
    before = signatures(dev)
    node = {"driver_internal_info": {"wipe_special_filesystems": False}}
    with pytest.raises(UnsafeDevice, match="VMFS"):
        metadata(dev, node, ramdisk_guard=False)
    assert signatures(dev) == before
