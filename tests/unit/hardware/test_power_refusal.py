"""Power actions refuse outside a ramdisk, naming the reason that actually applies."""

from __future__ import annotations

from typing import Any

import pytest

from agent import config
from agent.errors import PowerActionRefused
from agent.hardware.power import refuse_unless_ramdisk

DISK_ROOT = "/dev/vda1 / ext4 rw,relatime 0 0\n"
RAMDISK_ROOT = "rootfs / rootfs rw 0 0\n"


def _mounts(tmp_path, text: str) -> str:
    path = tmp_path / "mounts"
    path.write_text(text)
    return str(path)


def _refusal(mounts: str, **load: Any) -> str:
    with pytest.raises(PowerActionRefused) as caught:
        refuse_unless_ramdisk(config.load(read_proc=False, **load), "standby.power_off",
                              mounts)
    return caught.value.details


@pytest.mark.parametrize("load, named", [
    ({"env": {}, "flags": {"ramdisk": "false"}}, "--ramdisk false"),
    ({"env": {"DEPLOY_AGENT_RAMDISK": "false"}}, "DEPLOY_AGENT_RAMDISK=false"),
])
def test_an_explicit_false_is_named_as_such(tmp_path, load: dict, named: str) -> None:
    # even on an initramfs root: the operator's word wins
    details = _refusal(_mounts(tmp_path, RAMDISK_ROOT), **load)
    assert f"ramdisk is set to false by {named}" in details
    assert "not an initramfs" not in details
    assert "machine was left running" in details


def test_auto_on_a_disk_root_blames_the_root_filesystem(tmp_path) -> None:
    details = _refusal(_mounts(tmp_path, DISK_ROOT), env={})
    assert "the root filesystem is not an initramfs" in details
    assert "set to false" not in details


@pytest.mark.parametrize("mounts, load", [
    (RAMDISK_ROOT, {"env": {}}),
    (DISK_ROOT, {"env": {}, "flags": {"ramdisk": "true"}}),
])
def test_a_ramdisk_is_not_refused(tmp_path, mounts: str, load: dict) -> None:
    cfg = config.load(read_proc=False, **load)
    assert refuse_unless_ramdisk(cfg, "standby.power_off", _mounts(tmp_path, mounts)) is None
