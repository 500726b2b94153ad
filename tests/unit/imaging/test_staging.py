"""Choosing where a non-raw image file is staged, and the memory budget behind it."""

from __future__ import annotations

import os

import pytest

from agent import config as config_mod
from agent.errors import ConfigError, InvalidImage
from agent.imaging import formats, staging
from agent.imaging.staging import DISK_TAIL, MEMORY, MemoryStage

MiB = 1 << 20
GiB = 1 << 30


def qcow2(vsize: int) -> formats.Inspection:
    return formats.Inspection("qcow2", vsize)


# --- the budget --------------------------------------------------------------------------

@pytest.mark.parametrize("available,setting,budget", [
    (24 * GiB, "auto", 18 * GiB),                  # three quarters
    (3 * GiB, "auto", 2 * GiB),                    # all but qemu-img's 1 GiB
    (GiB + 10 * MiB, "auto", 10 * MiB),
    (512 * MiB, "auto", 0),                        # too little: never in memory
    (24 * GiB, 300, 300 * MiB),
    (24 * GiB, 0, 0),
    (2 * GiB, 4096, GiB),                          # a setting cannot overrun memory
])
def test_memory_budget(available, setting, budget):
    assert staging.memory_budget(setting, available=available) == budget


def test_available_memory_is_a_real_figure():
    assert 0 < staging.available_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_headroom_is_the_tightest_level(tmp_path):
    proc = tmp_path / "cgroup"
    write(proc, "9:pids:/\n4:memory:/a/b\n0::/\n")
    mem = tmp_path / "fs" / "memory"
    for level, limit, usage in (("", 1 << 62, 5 * GiB), ("a", 4 * GiB, 3 * GiB),
                                ("a/b", 2 * GiB, 100 * MiB)):
        write(mem / level / "memory.limit_in_bytes", f"{limit}\n")
        write(mem / level / "memory.usage_in_bytes", f"{usage}\n")
    assert staging.cgroup_headroom(str(proc), str(tmp_path / "fs")) == GiB


def test_cgroup_v2_headroom(tmp_path):
    proc = tmp_path / "cgroup"
    write(proc, "0::/agent.slice/agent.service\n")
    fs = tmp_path / "fs"
    write(fs / "cgroup.controllers", "memory\n")
    write(fs / "agent.slice" / "memory.max", "max\n")
    write(fs / "agent.slice" / "memory.current", "123\n")
    write(fs / "agent.slice" / "agent.service" / "memory.max", f"{512 * MiB}\n")
    write(fs / "agent.slice" / "agent.service" / "memory.current", f"{200 * MiB}\n")
    assert staging.cgroup_headroom(str(proc), str(fs)) == 312 * MiB


def test_no_memory_limit_means_no_cgroup_figure(tmp_path):
    proc = tmp_path / "cgroup"
    write(proc, "0::/\n")
    assert staging.cgroup_headroom(str(proc), str(tmp_path / "fs")) is None
    assert staging.cgroup_headroom(str(tmp_path / "missing")) is None


# --- the setting -------------------------------------------------------------------------

def test_setting_accepts_auto_and_mib():
    assert config_mod.load(cmdline="", env={}).image_staging_memory_mb == "auto"
    cfg = config_mod.load(cmdline="ipa-image-staging-memory-mb=2048", env={})
    assert cfg.image_staging_memory_mb == 2048
    cfg = config_mod.load(cmdline="", env={"DEPLOY_AGENT_IMAGE_STAGING_MEMORY_MB": "AUTO"})
    assert cfg.image_staging_memory_mb == "auto"


@pytest.mark.parametrize("value,why", [("-1", "must be at least 0"), ("1.5", "an integer"),
                                       ("lots", "an integer"), ("50%", "an integer")])
def test_setting_refuses_other_values(value, why):
    with pytest.raises(ConfigError, match=f"image_staging_memory_mb .*{why}"):
        config_mod.load(cmdline=f"ipa-image-staging-memory-mb={value}", env={})


# --- choosing ----------------------------------------------------------------------------

def test_a_file_within_the_budget_goes_to_memory_even_when_the_tail_could_hold_it():
    place = staging.choose("/dev/sda", 100 * GiB, qcow2(10 * GiB), 2 * GiB, 4 * GiB)
    assert (place.where, place.room, place.offset) == (MEMORY, 4 * GiB, 0)


def test_a_file_beyond_the_budget_goes_to_the_tail():
    place = staging.choose("/dev/sda", 100 * GiB, qcow2(10 * GiB), 5 * GiB, 4 * GiB)
    assert place.where == DISK_TAIL
    assert (place.offset, place.room) == (10 * GiB + MiB, 90 * GiB - MiB)


def test_neither_place_refuses_with_both_figures():
    with pytest.raises(InvalidImage) as exc:
        staging.choose("/dev/sda", 320 * MiB, qcow2(256 * MiB), 100 * MiB, 64 * MiB)
    assert exc.value.details == (
        f"there is no room to stage this qcow2 image file ({100 * MiB} bytes) for conversion: "
        f"the memory budget is {64 * MiB} bytes (image_staging_memory_mb) and /dev/sda "
        f"({320 * MiB} bytes) has {63 * MiB} bytes beyond the image's virtual size "
        f"({256 * MiB} bytes)")


@pytest.mark.parametrize("budget,where,room", [
    (GiB, MEMORY, GiB), (10 * MiB, DISK_TAIL, 63 * MiB)])
def test_an_unknown_size_takes_the_larger_place(budget, where, room):
    place = staging.choose("/dev/sda", 320 * MiB, qcow2(256 * MiB), None, budget)
    assert (place.where, place.room) == (where, room)


def test_an_unknown_size_with_no_place_at_all_is_refused():
    with pytest.raises(InvalidImage, match="unknown bytes"):
        staging.choose("/dev/sda", 256 * MiB, qcow2(256 * MiB), None, 0)


def test_tail_only():
    place = staging.choose("/dev/sda1", 320 * MiB, qcow2(256 * MiB), MiB, GiB, memory=False)
    assert place.where == DISK_TAIL and place.budget == GiB


# --- the memfd ---------------------------------------------------------------------------

def test_memory_stage_keeps_bytes_refuses_overflow_and_frees_itself():
    place = staging.Staging(MEMORY, "qcow2", 64 * MiB, 0, 8192, 8192, 4096)
    with MemoryStage(place, "/dev/sdz") as stage:
        stage.write(memoryview(b"a" * 5000))
        stage.rewind()
        stage.write(memoryview(b"b" * 8000))
        with pytest.raises(InvalidImage, match="memory budget is 8192 bytes .* 4096 bytes"):
            stage.write(memoryview(b"c" * 500))
        stage.seal()
        with open(stage.path, "rb") as f:
            assert f.read() == b"b" * 8000
        with pytest.raises(PermissionError):
            os.pwrite(stage.fd, b"x", 0)
    assert stage.fd == -1
    assert not any("memfd:deploy-agent-image" in os.readlink(f"/proc/self/fd/{fd}")
                   for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
