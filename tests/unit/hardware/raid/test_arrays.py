"""md array discovery from sysfs-shaped trees, and the stop/zero calls it leads to."""

from __future__ import annotations

import os
import subprocess

import pytest

from agent.errors import ToolError
from agent.hardware.raid import arrays
from tests.unit.hardware.fake_md import (
    add_md,
    add_partition,
    add_virtio_disk,
    mirror_tree,
)
from tests.unit.hardware.fake_sysfs import write


def test_mirror_over_partitions(tmp_path):
    mirror_tree(tmp_path)
    [md] = arrays.list_arrays(str(tmp_path))
    assert md.kname == "md127" and md.device == "/dev/md127"
    assert md.level == "1" and md.state == "clean" and md.metadata == "1.2"
    assert md.members == ("/dev/vda2", "/dev/vdb2")
    assert md.member_disks == ("/dev/vda", "/dev/vdb")
    assert md.size == 20967424 * 512
    assert md.volume_name == "root" and md.links == ("/dev/md/root",)
    assert md.names == ("/dev/md127", "/dev/md/root")
    assert md.devno == (9, 127)
    assert md.sysfs_dir == str(tmp_path / "sys/block/md127")


def test_whole_disk_members_are_their_own_disks(tmp_path):
    sdc = add_virtio_disk(tmp_path, "vdc", 6)
    sdd = add_virtio_disk(tmp_path, "vdd", 7)
    add_md(tmp_path, "md0", [sdc, sdd], level="raid0", names=("data",))
    [md] = arrays.list_arrays(str(tmp_path))
    assert md.level == "0"
    assert md.members == md.member_disks == ("/dev/vdc", "/dev/vdd")


def test_members_on_nvme_partitions_and_raid10(tmp_path):
    disks = []
    for index in range(4):
        real = add_virtio_disk(tmp_path, f"vd{'abcd'[index]}", 4 + index)
        os.rename(real, real.parent / f"nvme{index}n1")   # only the name matters here
        (tmp_path / "sys/block" / f"vd{'abcd'[index]}").unlink()
        (tmp_path / "sys/class/block" / f"vd{'abcd'[index]}").unlink()
        disks.append(real.parent / f"nvme{index}n1")
    parts = [add_partition(tmp_path, d, 1, start=2048, sectors=204800) for d in disks]
    add_md(tmp_path, "md126", parts, level="raid10", sectors=409600)
    [md] = arrays.list_arrays(str(tmp_path), ask_mdadm=False)
    assert md.level == "1+0"
    assert md.members == ("/dev/nvme0n1p1", "/dev/nvme1n1p1", "/dev/nvme2n1p1",
                          "/dev/nvme3n1p1")
    assert md.member_disks == ("/dev/nvme0n1", "/dev/nvme1n1", "/dev/nvme2n1", "/dev/nvme3n1")
    assert md.volume_name is None


def test_inactive_array_is_listed_with_its_members_and_no_size(tmp_path):
    found = mirror_tree(tmp_path, names=())
    vdc = add_virtio_disk(tmp_path, "vdc", 6)
    part = add_partition(tmp_path, vdc, 1, start=2048, sectors=2048000)
    add_md(tmp_path, "md9", [part], state="inactive")
    listed = arrays.list_arrays(str(tmp_path))
    assert [a.kname for a in listed] == ["md9", "md127"]        # natural order
    inactive = listed[0]
    assert inactive.state == "inactive" and inactive.size == 0 and inactive.level is None
    assert inactive.members == ("/dev/vdc1",) and inactive.member_disks == ("/dev/vdc",)
    assert found["md127"].name == "md127"


def test_volume_name_prefers_the_bare_link_and_strips_a_homehost(tmp_path):
    mirror_tree(tmp_path, names=("otherhost:root",))
    [md] = arrays.list_arrays(str(tmp_path))
    assert md.volume_name == "root" and md.links == ("/dev/md/otherhost:root",)

    other = tmp_path / "b"
    mirror_tree(other, names=("boot:root", "root"))
    [md] = arrays.list_arrays(str(other))
    assert md.volume_name == "root"
    assert set(md.links) == {"/dev/md/boot:root", "/dev/md/root"}


def test_volume_name_from_the_udev_database(tmp_path):
    mirror_tree(tmp_path, names=())
    write(tmp_path / "run/udev/data/b9:127",
          "S:md/root\nE:MD_LEVEL=raid1\nE:MD_NAME=any:root\nE:MD_DEVNAME=root\n")
    [md] = arrays.list_arrays(str(tmp_path))
    assert md.volume_name == "root"


def test_links_to_other_things_are_ignored(tmp_path):
    mirror_tree(tmp_path, names=())
    (tmp_path / "dev/md").mkdir(parents=True)
    os.symlink("../md127", tmp_path / "dev/md/md127")      # a link named after itself
    os.symlink("../sda", tmp_path / "dev/md/notmd")
    [md] = arrays.list_arrays(str(tmp_path))
    assert md.volume_name is None and md.links == ()


def test_no_arrays_without_md_directories(tmp_path):
    add_virtio_disk(tmp_path, "vda", 4)
    assert arrays.list_arrays(str(tmp_path)) == []
    assert arrays.list_arrays(str(tmp_path / "missing")) == []


def test_on_disks(tmp_path):
    mirror_tree(tmp_path)
    listed = arrays.list_arrays(str(tmp_path))
    assert arrays.on_disks(listed, ["/dev/vdb"]) == listed
    assert arrays.on_disks(listed, ["/dev/vdc", "/dev/vda2"]) == []


class Recorder:
    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def __call__(self, tool, *args, check=True, **kwargs):
        self.calls.append((tool, *args))
        code, err = self.answers.get(args[-1], (0, ""))
        if code and check:
            raise ToolError(f"{tool} failed", tool=tool, returncode=code, stderr=err)
        return subprocess.CompletedProcess([tool, *args], code, "", err)


def test_stop_and_forget_stops_then_zeroes_every_member(tmp_path, monkeypatch):
    mirror_tree(tmp_path)
    [md] = arrays.list_arrays(str(tmp_path))
    recorder = Recorder({"/dev/vdb2": (1, "mdadm: Unrecognised md component device - "
                                          "/dev/vdb2\n")})
    monkeypatch.setattr(arrays.tools, "run", recorder)
    assert arrays.stop_and_forget([md]) == ["/dev/vda2", "/dev/vdb2"]
    assert recorder.calls == [("mdadm", "--stop", "/dev/md127"),
                              ("mdadm", "--zero-superblock", "/dev/vda2"),
                              ("mdadm", "--zero-superblock", "/dev/vdb2")]


def test_zeroing_fails_loudly_on_a_real_error(monkeypatch):
    recorder = Recorder({"/dev/vda2": (1, "mdadm: Couldn't open /dev/vda2 for write - "
                                          "not zeroing\n")})
    monkeypatch.setattr(arrays.tools, "run", recorder)
    with pytest.raises(ToolError, match="could not zero"):
        arrays.zero_superblocks(["/dev/vda2"])
