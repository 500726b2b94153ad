"""The erase steps on machines with md arrays: sysfs/procfs-shaped trees, mdadm recorded.

The arrays, their members and the holders links are laid out as the kernel
does (tests/unit/hardware/fake_md.py); mdadm is a recorder because this
kernel has no md driver; the erase methods are recorders because the disks
are not real.  The real thing on loop devices is in
tests/functional/hardware/test_erase_raid_loop.py.
"""

from __future__ import annotations

import os
import subprocess
import types

import pytest

from agent.errors import CleaningError, ToolError, UnsafeDevice
from agent.hardware import disks, erase, erase_guards, erase_nvme, erase_preview, managers
from agent.hardware.erase_base import EraseOptions, EraseUnsupported
from agent.hardware.raid import arrays
from tests.unit.hardware.fake_md import add_md, add_partition, add_virtio_disk, mirror_tree
from tests.unit.hardware.fake_sysfs import add_block, write


class Machine:
    """A fake tree plus one ordered log of everything the erase did."""

    def __init__(self, root, monkeypatch):
        self.root = root
        self.events: list[tuple[str, ...]] = []
        self.stop_fails = False
        monkeypatch.setattr(arrays.tools, "run", self._mdadm)
        monkeypatch.setattr(erase, "erase_metadata", self._wipe)
        monkeypatch.setattr(erase, "erase_one", self._erase_one)
        monkeypatch.setattr(erase_nvme, "erase", self._no_nvme)

    def _mdadm(self, tool, *args, check=True, **kwargs):
        self.events.append((tool, *args))
        if self.stop_fails and args[0] == "--stop":
            raise ToolError("mdadm --stop failed with exit code 1: mdadm: Cannot get "
                            "exclusive access to /dev/md127", tool=tool, returncode=1)
        return subprocess.CompletedProcess([tool, *args], 0, "", "")

    def _wipe(self, disk):
        self.events.append(("wipe", disk.name))
        return "metadata erased"

    def _erase_one(self, disk, *args, **kwargs):
        self.events.append(("erase", disk.name))
        return "overwritten"

    def _no_nvme(self, disk, names):
        raise EraseUnsupported("not NVMe")

    def disks(self):
        return disks.list_disks(str(self.root))

    def run(self, step=erase.erase_devices_metadata, node=None, options=EraseOptions(),
            guard_shared=False):
        return step(self.disks(), node or {}, options, guard_shared=guard_shared,
                    root=str(self.root))


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    mirror_tree(tmp_path, names=("root",))
    return Machine(tmp_path, monkeypatch)


STOP_AND_ZERO = [("mdadm", "--stop", "/dev/md127"),
                 ("mdadm", "--zero-superblock", "/dev/vda2"),
                 ("mdadm", "--zero-superblock", "/dev/vdb2")]


def test_the_old_guard_refused_a_disk_an_array_holds(mirror):
    # what plan() asked before arrays were understood: refusal_reasons with no array
    # to stop.  The same tree passes once md127 is the one being stopped.
    vda = next(d for d in mirror.disks() if d.name == "/dev/vda")
    usage = erase_guards.UsageSnapshot(str(mirror.root))
    assert erase_guards.refusal_reasons(vda, usage, guard_shared=False) == [
        "/dev/vda2 is held by md RAID /dev/md127 (raid1)"]
    assert erase_guards.refusal_reasons(vda, usage, guard_shared=False,
                                        stopping={"md127"}) == []


def test_metadata_erase_stops_zeroes_then_wipes_the_member_disks(mirror):
    result = mirror.run()
    assert mirror.events == STOP_AND_ZERO + [("wipe", "/dev/vda"), ("wipe", "/dev/vdb")]
    assert result == {"erased": {"/dev/vda": "metadata erased", "/dev/vdb": "metadata erased"},
                      "skipped": {}, "arrays_stopped": ["/dev/md127"]}


@pytest.mark.parametrize("step, method", [(erase.erase_devices, "erase"),
                                          (erase.erase_devices_express, "wipe")])
def test_every_erase_step_stops_the_arrays_first(mirror, step, method):
    result = mirror.run(step)
    assert mirror.events[:3] == STOP_AND_ZERO
    assert sorted(mirror.events[3:]) == [(method, "/dev/vda"), (method, "/dev/vdb")]
    assert result["arrays_stopped"] == ["/dev/md127"]
    assert "/dev/md127" not in result["erased"] and "/dev/md127" not in result["skipped"]


def test_whole_disk_members_hidden_by_the_listing_are_erased(tmp_path, monkeypatch):
    vdc = add_virtio_disk(tmp_path, "vdc", 6)
    vdd = add_virtio_disk(tmp_path, "vdd", 7)
    add_md(tmp_path, "md0", [vdc, vdd], level="raid0", names=("scratch",))
    machine = Machine(tmp_path, monkeypatch)
    assert [d.name for d in machine.disks()] == ["/dev/md0"]
    result = machine.run()
    assert machine.events == [("mdadm", "--stop", "/dev/md0"),
                              ("mdadm", "--zero-superblock", "/dev/vdc"),
                              ("mdadm", "--zero-superblock", "/dev/vdd"),
                              ("wipe", "/dev/vdc"), ("wipe", "/dev/vdd")]
    assert result["arrays_stopped"] == ["/dev/md0"]


def test_an_inactive_array_is_stopped_too(tmp_path, monkeypatch):
    vdc = add_virtio_disk(tmp_path, "vdc", 6)
    add_md(tmp_path, "md9", [add_partition(tmp_path, vdc, 1, start=2048, sectors=204800)],
           state="inactive")
    machine = Machine(tmp_path, monkeypatch)
    assert [d.name for d in machine.disks()] == ["/dev/vdc"]       # md9 has no size
    machine.run()
    assert machine.events == [("mdadm", "--stop", "/dev/md9"),
                              ("mdadm", "--zero-superblock", "/dev/vdc1"),
                              ("wipe", "/dev/vdc")]


def test_an_array_on_skipped_disks_is_left_alone(mirror):
    add_virtio_disk(mirror.root, "vdc", 6)
    node = {"properties": {"skip_block_devices": [{"name": "/dev/vda"}, {"name": "/dev/vdb"},
                                                  {"volume_name": "root"}]}}
    result = mirror.run(node=node)
    assert mirror.events == [("wipe", "/dev/vdc")]
    assert result["skipped"] == {"/dev/vda": erase.SKIP_LISTED, "/dev/vdb": erase.SKIP_LISTED,
                                 "/dev/md127": erase.SKIP_LISTED}
    assert "arrays_stopped" not in result


def test_skipping_only_the_member_disks_leaves_the_array_unstopped(mirror):
    node = {"properties": {"skip_block_devices": [{"name": "/dev/vda"}, {"name": "/dev/vdb"}]}}
    result = mirror.run(node=node)
    assert mirror.events == []
    assert result["skipped"]["/dev/md127"] == \
        "an md array with no member on a disk being erased"


def refusal(machine, node=None, **kwargs):
    with pytest.raises(UnsafeDevice) as exc:
        machine.run(node=node, **kwargs)
    assert machine.events == [], "something was stopped or written before the refusal"
    return exc.value.details


def test_an_array_spanning_an_erased_and_a_skipped_disk_is_refused(mirror):
    text = refusal(mirror, {"properties": {"skip_block_devices": [{"name": "/dev/vdb"}]}})
    assert ("md array /dev/md127 (root) also lies on /dev/vdb (listed in properties."
            "skip_block_devices); stopping it to erase /dev/vda would break it there") in text


def test_an_array_spanning_a_read_only_disk_is_refused(mirror):
    write(mirror.root / "sys/block/vdb/ro", "1\n")
    text = refusal(mirror, options=EraseOptions(skip_read_only=True))
    assert "also lies on /dev/vdb (read-only (agent_erase_skip_read_only))" in text
    text = refusal(mirror)
    assert "/dev/vdb is read-only" in text


def test_an_array_kept_by_the_skip_list_but_on_erased_disks_is_refused(mirror):
    text = refusal(mirror, {"properties": {"skip_block_devices": [{"volume_name": "root"}]}})
    assert ("md array /dev/md127 (root) is listed in properties.skip_block_devices but has "
            "members on /dev/vda, /dev/vdb, which would be erased") in text


def mount(root, devno, point):
    path = root / "proc/self/mountinfo"
    old = path.read_text() if path.exists() else ""
    write(path, old + f"40 27 {devno} / {point} rw,relatime - ext4 /dev/x rw\n")


def test_a_mounted_array_is_refused(mirror):
    mount(mirror.root, "9:127", "/mnt/root")
    text = refusal(mirror)
    assert ("md array /dev/md127 (root) must be stopped to erase /dev/vda, /dev/vdb, but "
            "/dev/md127 is mounted on /mnt/root") in text


def test_a_mounted_partition_of_the_array_is_refused(mirror):
    md = (mirror.root / "sys/block/md127").resolve()
    write(md / "md127p1" / "partition", "1\n")
    write(md / "md127p1" / "dev", "259:7\n")
    write(md / "md127p1" / "start", "2048\n")
    write(md / "md127p1" / "size", "204800\n")
    mount(mirror.root, "259:7", "/srv")
    assert "/dev/md127p1 is mounted on /srv" in refusal(mirror)


def test_a_mounted_member_disk_partition_is_refused(mirror):
    mount(mirror.root, "252:1", "/boot/efi")            # vda1, the ESP beside the holder
    assert "/dev/vda: /dev/vda1 is mounted on /boot/efi" in refusal(mirror)


def test_lvm_on_the_array_is_refused(mirror):
    dm = add_block(mirror.root, "dm-0", "virtual", devno="253:0", sectors=2048)
    write(dm / "dm" / "uuid", "LVM-abc\n")
    write(dm / "dm" / "name", "vg-root\n")
    md = (mirror.root / "sys/block/md127").resolve()
    os.symlink(os.path.relpath(dm, md / "holders"), md / "holders" / "dm-0")
    assert ("/dev/md127 is held by device-mapper /dev/dm-0 (vg-root, LVM)"
            in refusal(mirror))


def test_shared_san_guard_on_members_and_inside_the_array(mirror, monkeypatch):
    found = {"/dev/vdb": {"TYPE": "vmfs"}, "/dev/md127": {"TYPE": "gfs2"}}
    monkeypatch.setattr(erase_guards, "_probe", lambda dev, *a: found.get(dev, {}))
    monkeypatch.setattr(erase_guards, "_present", lambda dev: True)   # /dev/md127 is not here
    monkeypatch.setattr(erase_guards.partition_table, "read_table",
                        lambda dev: types.SimpleNamespace(partitions=[]))
    text = refusal(mirror, guard_shared=True)
    assert "/dev/md127 carries a GFS2 signature (gfs2)" in text
    assert "/dev/vdb: /dev/vdb carries a VMFS signature (vmfs)" in text
    # the guard is the operator's to turn off
    mirror.run(guard_shared=False)
    assert mirror.events[:1] == [("mdadm", "--stop", "/dev/md127")]


def test_every_refusal_is_reported_at_once(mirror):
    add_virtio_disk(mirror.root, "vdc", 6)
    add_md(mirror.root, "md5", [add_partition(mirror.root, mirror.root / "sys/devices" /
                                              "pci0000:00/0000:00:06.0/virtio6/block/vdc",
                                              1, start=2048, sectors=204800),
                                (mirror.root / "sys/block/vda").resolve() / "vda1"],
           names=("esp",))
    mount(mirror.root, "9:127", "/mnt")
    text = refusal(mirror, {"properties": {"skip_block_devices": [{"name": "/dev/vdc"}]}})
    assert "md array /dev/md5 (esp) also lies on /dev/vdc" in text
    assert "/dev/md127 is mounted on /mnt" in text


def test_a_failing_stop_fails_the_step_before_any_write(mirror):
    mirror.stop_fails = True
    with pytest.raises(CleaningError, match="could not stop the md arrays on the disks to "
                                            "erase \\(/dev/md127\\).*exclusive access"):
        mirror.run()
    assert [e for e in mirror.events if e[0] != "mdadm"] == []


def test_the_erase_plan_names_the_arrays_it_would_stop(mirror, monkeypatch):
    listed = mirror.disks()
    monkeypatch.setattr(managers, "list_disks", lambda state: listed)
    state = types.SimpleNamespace(config=types.SimpleNamespace(
        enable_discard_erase=False, guard_special_filesystems=False))
    answer = erase_preview.preview(state, {}, root=str(mirror.root))
    assert answer == {"disks": ["/dev/md127", "/dev/vda", "/dev/vdb"],
                      "erase": ["/dev/vda", "/dev/vdb"], "skipped": {},
                      "arrays_stopped": [{"name": "/dev/md127", "volume_name": "root",
                                          "members": ["/dev/vda2", "/dev/vdb2"],
                                          "member_disks": ["/dev/vda", "/dev/vdb"]}],
                      "refused": None}
    node = {"properties": {"skip_block_devices": [{"name": "/dev/vdb"}]}}
    answer = erase_preview.preview(state, node, root=str(mirror.root))
    assert answer["erase"] == [] and "also lies on /dev/vdb" in answer["refused"]
    assert mirror.events == []                         # a plan stops and writes nothing
