"""burnin_disk with the real fio on loop devices: metrics, verify errors, guards, cancel."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from agent import tools
from agent.context import CommandContext
from agent.errors import Cancelled, CleaningError, UnsafeDevice
from agent.hardware import burnin
from agent.hardware import burnin_run as run
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import MIB, loop_disk, read_at, sh
from tests.functional.hardware.test_burnin_tools import alive, in_background, wait_for

pytestmark = [requires_loop,
              pytest.mark.skipif(tools.which("fio") is None, reason="no fio")]
WAIT = 120


def node(**knobs) -> dict:
    return {"provision_state": "cleaning", "driver_info": knobs}


def test_disk_burnin_writes_verifies_and_reports_every_disk(make_loop, tmp_path):
    devs = [make_loop(16 * MIB), make_loop(8 * MIB)]
    out = tmp_path / "fio.json"
    ctx = CommandContext("d1", "burnin_disk")
    result = burnin.burnin_disk(node(agent_burnin_fio_disk_loops=1,
                                     agent_burnin_fio_disk_outputfile=str(out)),
                                None, ctx, disks=[loop_disk(d) for d in devs])
    assert sorted(result["disks"]) == sorted(devs)
    for dev, size in zip(devs, (16 * MIB, 8 * MIB), strict=True):
        summary = result["disks"][dev]
        assert summary["verify_errors"] == 0 and summary["error"] == 0
        assert summary["write"]["bytes"] > 0 and summary["write"]["bw_bytes"] > 0
        assert summary["read"]["bytes"] >= size // 2 and summary["read"]["iops"] > 0
    # fio really wrote: its verify headers now sit on the disk
    assert read_at(devs[0], 0, 4096) != bytes(4096)
    assert '"jobs"' in out.read_text()
    snap = ctx.progress.snapshot()
    assert snap["phase"] == "fio disk burn-in" and snap["total"] == 12 * MIB


def test_disk_burnin_with_a_runtime(make_loop):
    dev = make_loop(8 * MIB)
    result = burnin.burnin_disk(node(agent_burnin_fio_disk_runtime="1"), None,
                                disks=[loop_disk(dev)])
    assert result["runtime_s"] == 1 and result["disks"][dev]["write"]["bytes"] > 0


def test_verification_errors_fail_the_step(make_loop, tmp_path):
    """Corrupt the loop's backing file under fio, as a disk returning bad data would."""
    dev = make_loop(16 * MIB, backing_dir=str(tmp_path))
    backing = sh("losetup", "-n", "-O", "BACK-FILE", dev).stdout.strip()
    stop = threading.Event()

    def scribble():
        fd = os.open(backing, os.O_WRONLY)
        try:
            while not stop.is_set():
                for offset in range(0, 16 * MIB, MIB):
                    os.pwrite(fd, b"\xa5" * MIB, offset)
        finally:
            os.close(fd)
    corrupter = threading.Thread(target=scribble, daemon=True)
    corrupter.start()
    try:
        with pytest.raises(CleaningError) as exc:
            burnin.burnin_disk(node(agent_burnin_fio_disk_loops=1), None,
                               disks=[loop_disk(dev)])
    finally:
        stop.set()
        corrupter.join()
    assert f"{dev}: " in exc.value.details and "verification error(s)" in exc.value.details
    assert "verify: bad magic header" in exc.value.details


@pytest.fixture
def mounted(tmp_path):
    mounts = []

    def mount(device: str) -> None:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        sh("mount", "-t", "ext4", device, str(target))
        mounts.append(str(target))
    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", target], capture_output=True)


def test_mounted_disk_refuses_the_burnin_before_any_disk_is_written(make_loop, mounted):
    busy, idle = make_loop(16 * MIB), make_loop(8 * MIB)
    sh("mkfs.ext4", "-q", "-F", busy)
    mounted(busy)
    with pytest.raises(UnsafeDevice) as exc:
        burnin.burnin_disk(node(agent_burnin_fio_disk_loops=1), None,
                           disks=[loop_disk(busy), loop_disk(idle)])
    assert f"{busy} is mounted" in exc.value.details
    assert read_at(idle, 0, 8 * MIB) == bytes(8 * MIB)


def test_skip_block_devices_is_respected(make_loop):
    kept, tested = make_loop(8 * MIB), make_loop(8 * MIB)
    sh("mkfs.ext4", "-q", "-F", kept)
    before = read_at(kept, 0, 8 * MIB)
    target = node(agent_burnin_fio_disk_loops=1)
    target["properties"] = {"skip_block_devices": [{"name": kept}]}
    result = burnin.burnin_disk(target, None, disks=[loop_disk(kept), loop_disk(tested)])
    assert list(result["disks"]) == [tested]
    assert result["skipped"] == {kept: "listed in properties.skip_block_devices"}
    assert read_at(kept, 0, 8 * MIB) == before


def test_cancel_stops_fio(make_loop):
    dev = make_loop(64 * MIB)
    ctx = CommandContext("d2", "burnin_disk")
    thread, box = in_background(
        lambda: burnin.burnin_disk(node(agent_burnin_fio_disk_loops=1000), None, ctx,
                                   disks=[loop_disk(dev)]))
    wait_for(lambda: ctx.progress.snapshot()["done"] > 0, "fio progress")
    parent = ctx.progress.snapshot()["tool_pid"]
    started = run.tool_processes(parent)
    assert len(started) > 1                  # fio's job runs in a process of its own
    ctx.cancel_event.set()
    thread.join(WAIT)
    assert isinstance(box.get("error"), Cancelled), box
    assert not [pid for pid in started if alive(pid)]
