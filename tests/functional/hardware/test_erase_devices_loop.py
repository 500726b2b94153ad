"""erase_devices on real loop devices: overwrite, verified discard, cancel.

Loop devices have no NVMe or ATA security, so these runs exercise the
software methods for real (the hardware methods are covered with captured
tool output in the unit tests).
"""

from __future__ import annotations

import os
import threading

import pytest

from agent.errors import Cancelled, CleaningError
from agent.hardware import erase, erase_overwrite
from agent.hardware.erase_base import EraseOptions
from agent.progress import Progress
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import MIB, loop_disk, read_at

pytestmark = requires_loop
SOFTWARE_ONLY = dict(nvme=False, ata=False)


class Ctx:
    def __init__(self):
        self.progress = Progress()
        self.cancel_event = threading.Event()

    def check_cancelled(self):
        if self.cancel_event.is_set():
            raise Cancelled("erase_devices was cancelled by request")


def fill(dev: str, size: int, byte: int = 0xA5) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        chunk = bytes([byte]) * MIB
        for offset in range(0, size, MIB):
            os.pwrite(fd, chunk, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_overwrite_random_then_zero_on_several_disks(make_loop):
    devs = [make_loop(8 * MIB) for _ in range(3)]
    for dev in devs:
        fill(dev, 8 * MIB)
    ctx = Ctx()
    result = erase.erase_devices([loop_disk(d) for d in devs], {},
                                 EraseOptions(iterations=1, zeroize=True, concurrency=2,
                                              **SOFTWARE_ONLY), ctx)
    assert result["erased"] == dict.fromkeys(devs, "overwritten (1 random pass(es), zeroed)")
    for dev in devs:
        assert read_at(dev, 0, 8 * MIB) == bytes(8 * MIB)
    snap = ctx.progress.snapshot()
    assert snap["done"] == snap["total"] == 24 * MIB and snap["devices_done"] == 3


def test_random_pass_only_leaves_no_original_data(make_loop):
    dev = make_loop(4 * MIB)
    fill(dev, 4 * MIB)
    erase.erase_devices([loop_disk(dev)], {}, EraseOptions(iterations=2, zeroize=False,
                                                            **SOFTWARE_ONLY))
    data = read_at(dev, 0, 4 * MIB)
    assert data.count(0xA5) < len(data) // 100        # keystream, not the old pattern
    assert data.count(0) < len(data) // 100


def test_verified_discard_when_enabled(make_loop):
    dev = make_loop(8 * MIB)
    fill(dev, 8 * MIB)
    result = erase.erase_devices([loop_disk(dev)], {},
                                 EraseOptions(discard=True, iterations=0, zeroize=False,
                                              **SOFTWARE_ONLY))
    assert result["erased"] == {dev: "verified discard"}
    assert read_at(dev, 0, 8 * MIB) == bytes(8 * MIB)


def test_discard_that_leaves_data_is_not_trusted(make_loop, monkeypatch):
    dev = make_loop(4 * MIB)
    fill(dev, 4 * MIB)
    # a device that acknowledges discard but keeps returning the old data
    real_run = erase_overwrite.tools.run

    def ignore_discard(tool, *args, **kwargs):
        return None if tool == "blkdiscard" else real_run(tool, *args, **kwargs)
    monkeypatch.setattr(erase_overwrite.tools, "run", ignore_discard)
    with pytest.raises(CleaningError, match="still returns data after discard"):
        erase.erase_devices([loop_disk(dev)], {}, EraseOptions(discard=True, **SOFTWARE_ONLY))
    result = erase.erase_devices([loop_disk(dev)], {},
                                 EraseOptions(discard=True, continue_if_failed=True,
                                              iterations=0, zeroize=True, **SOFTWARE_ONLY))
    assert result["erased"] == {dev: "overwritten (0 random pass(es), zeroed)"}
    assert read_at(dev, 0, 4 * MIB) == bytes(4 * MIB)


def test_cancel_during_overwrite(make_loop):
    dev = make_loop(64 * MIB)
    ctx = Ctx()
    original = ctx.progress.update

    def cancel_after_first_chunk(**kw):
        original(**kw)
        if kw.get("done"):
            ctx.cancel_event.set()
    ctx.progress.update = cancel_after_first_chunk
    with pytest.raises(Cancelled):
        erase.erase_devices([loop_disk(dev)], {}, EraseOptions(iterations=3, **SOFTWARE_ONLY),
                            ctx)
    assert ctx.progress.snapshot()["done"] < 64 * MIB
