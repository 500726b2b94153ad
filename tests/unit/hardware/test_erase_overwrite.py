"""Software erase error paths (the working paths run on loop devices)."""

from __future__ import annotations

import pytest

from agent import tools
from agent.errors import ToolError
from agent.hardware import erase_overwrite
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported
from tests.unit.hardware.fake_sysfs import write


def disk_with_discard(tmp_path, max_bytes: str) -> Disk:
    write(tmp_path / "queue/discard_max_bytes", max_bytes + "\n")
    return Disk(name=str(tmp_path / "missing-device"), size=1 << 20,
                sysfs_path=str(tmp_path))


def test_no_discard_support_is_unsupported(tmp_path):
    with pytest.raises(EraseUnsupported, match="does not support discard"):
        erase_overwrite.discard(disk_with_discard(tmp_path, "0"), lambda f: None)


def test_failing_blkdiscard_is_a_failure(tmp_path, monkeypatch):
    def refuse(tool, *args, **kwargs):
        raise ToolError("blkdiscard: BLKDISCARD ioctl failed: Operation not supported",
                        tool=tool)
    monkeypatch.setattr(tools, "run", refuse)
    with pytest.raises(EraseFailed, match="BLKDISCARD ioctl failed"):
        erase_overwrite.discard(disk_with_discard(tmp_path, "4294966784"), lambda f: None)


def test_unopenable_device_is_a_failure(tmp_path):
    disk = Disk(name=str(tmp_path / "no-such-disk"), size=1)
    with pytest.raises(EraseFailed, match="cannot open .* for writing"):
        erase_overwrite.overwrite(disk, 1, True, lambda f: None, lambda: None)


def test_nothing_to_overwrite_with_is_unsupported():
    with pytest.raises(EraseUnsupported, match="overwriting is disabled"):
        erase_overwrite.overwrite(Disk(name="/dev/null", size=1), 0, False, lambda f: None,
                                  lambda: None)


def test_sample_offsets_cover_start_and_end():
    offsets = erase_overwrite._sample_offsets(1 << 30, 1 << 20)
    assert offsets[0] == 0 and offsets[-1] == (1 << 30) - (1 << 20)
    assert len(offsets) >= 60
    assert erase_overwrite._sample_offsets(4096, 1 << 20) == [0]
