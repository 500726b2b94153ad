"""Software RAID create/delete on real loop devices (512- and 4096-byte sectors).

Everything is real (wipefs, sgdisk, sfdisk, BLKPG, the kernel's partition
nodes, mdadm --zero-superblock, our table reader) except array creation:
this kernel has no md driver, so ``apply.create_array`` (mdadm --create and
the wait for /dev/mdN) is replaced by a recorder that checks the member
nodes exist with the planned geometry and keeps the mdadm argument list.
"""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest

from agent.disk import partition_table as pt
from agent.errors import AgentError, CleaningError, InvalidCommandParamsError
from agent.hardware.raid import apply, mdadm, steps
from agent.progress import Progress
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import (
    MIB,
    blkid_finds,
    expose,
    loop_disk,
    part,
    read_at,
    sh,
    signatures,
)
from tests.unit.hardware.raid import md_superblock

pytestmark = requires_loop
SIZE = 1024 * MIB
GUARD = {"guard_shared": True}


class Recorder:
    """Stands in for mdadm --create + the md driver; fails on request."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, array, ctx) -> None:
        if array.md_device == self.fail_on:
            raise AgentError(f"mdadm: cannot open {array.md_device}: No such device")
        for member in array.members:
            st = os.stat(member)
            assert stat.S_ISBLK(st.st_mode), f"{member} is not a block node"
            kname = os.path.basename(member)
            start = int(open(f"/sys/class/block/{kname}/start").read()) * 512
            size = int(open(f"/sys/class/block/{kname}/size").read()) * 512
            disk = next(d for d in array.member_disks if member.startswith(d))
            holder = next(h for h in PLANNED[disk] if h.path == member)
            assert (start, size) == (holder.start, holder.size)
        self.calls.append(mdadm.create(array.md_device, array.mdadm_level, array.members,
                                       name=array.volume_name, metadata=array.metadata))


PLANNED: dict = {}


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    original = apply.prepare

    def remember(*args, **kwargs):
        prepared = original(*args, **kwargs)
        PLANNED.clear()
        PLANNED.update({d.disk: d.holders for d in prepared.plan.disks})
        return prepared

    monkeypatch.setattr(apply, "prepare", remember)
    monkeypatch.setattr(apply, "create_array", rec)
    # the md driver is the hardware this kernel lacks (see the module docstring)
    monkeypatch.setattr(apply.arrays, "ensure_driver", lambda: True)
    return rec


class Ctx:
    def __init__(self) -> None:
        self.progress = Progress()
        self.cancelled = False

    def check_cancelled(self) -> None:
        pass

    def sleep(self, seconds: float) -> None:
        pass


def node(boot_mode: str = "bios", label: str | None = None, **extra) -> dict:
    caps = f"boot_mode:{boot_mode}" + (f",disk_label:{label}" if label else "")
    return {"properties": {"capabilities": caps, "cpu_arch": "x86_64"}, **extra}


def raid1(devs: list[str], size="MAX", name: str = "root") -> dict:
    return {"logical_disks": [{"size_gb": size, "raid_level": "1", "controller": "software",
                               "volume_name": name, "is_root_volume": True,
                               "physical_disks": [{"name": d} for d in devs]}]}


def create(devs, config, the_node, **kw):
    disks = [loop_disk(d) for d in devs]
    return steps.create(disks, the_node, config, Ctx(), delete_existing=kw.get("delete", False),
                        error_cls=CleaningError, **GUARD)


def delete(devs, the_node=None):
    return steps.delete([loop_disk(d) for d in devs], the_node or node(), Ctx(),
                        error_cls=CleaningError, **GUARD)


def sfdisk_json(dev: str) -> dict:
    return json.loads(sh("sfdisk", "--json", dev).stdout)["partitiontable"]


def dirty(dev: str) -> None:
    """A previous tenant: a GPT with an ext4 partition."""
    sh("sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", "-F", part(dev, 1))
    sh("partx", "-d", dev)


@pytest.mark.parametrize("sector", [512, 4096])
@pytest.mark.parametrize("mode,label", [("uefi", None), ("bios", None), ("bios", "gpt")])
def test_create_raid1_lays_out_holders_and_calls_mdadm(make_loop, recorder, sector, mode,
                                                      label):
    devs = [make_loop(SIZE, sector_size=sector) for _ in range(2)]
    for dev in devs:
        dirty(dev)
    result = create(devs, raid1(devs), node(mode, label))

    room = {"uefi": 550, "bios": 1 if label == "gpt" else 0}[mode]
    want_label = label or ("gpt" if mode == "uefi" else "msdos")
    for dev in devs:
        table = pt.read_table(dev)
        assert table.kind == ("gpt" if want_label == "gpt" else "mbr") and table.ok
        assert table.sector_size == sector
        [holder] = table.partitions
        assert holder.start_bytes == (1 + room) * MIB
        assert holder.start_bytes % MIB == 0 and holder.size_bytes % MIB == 0
        # an independent reader agrees (sfdisk), and the type says Linux RAID
        [entry] = sfdisk_json(dev)["partitions"]
        assert entry["start"] * sector == holder.start_bytes
        assert entry["type"].upper() in ("FD", "A19D880F-05FC-4D3B-A006-743F0F84911E")
        # the previous tenant's filesystem is gone from the disk and the old range
        assert blkid_finds(dev, 1 * MIB, 64 * MIB) == ""
        assert os.path.exists(part(dev, 1))
    [argv] = recorder.calls
    assert argv[:2] == ["--create", "/dev/md0"]
    assert {"--metadata=1.2", "--level=1", "--raid-devices=2", "--name=root",
            "--homehost=any", "--data-offset=1024K"} <= set(argv)
    assert argv[-2:] == [part(d, 1) for d in devs]
    [ld] = result["logical_disks"]
    assert ld["controller"] == "software" and ld["raid_level"] == "1"
    assert ld["physical_disks"] == devs and ld["is_root_volume"] is True
    assert isinstance(ld["size_gb"], int)


def test_two_volumes_fixed_then_max_on_three_disks(make_loop, recorder):
    devs = [make_loop(2560 * MIB) for _ in range(3)]
    config = {"logical_disks": [
        {"size_gb": 1, "raid_level": "5", "controller": "software", "volume_name": "root",
         "is_root_volume": True, "physical_disks": [{"name": d} for d in devs]},
        {"size_gb": "MAX", "raid_level": "0", "controller": "software", "volume_name": "data",
         "physical_disks": [{"name": d} for d in devs[:2]]}]}
    result = create(devs, config, node("uefi"))
    assert [c[1] for c in recorder.calls] == ["/dev/md0", "/dev/md1"]
    assert len(pt.read_table(devs[0]).partitions) == 2
    assert len(pt.read_table(devs[2]).partitions) == 1
    assert [ld["volume_name"] for ld in result["logical_disks"]] == ["root", "data"]
    assert result["logical_disks"][1]["physical_disks"] == devs[:2]
    assert result["logical_disks"][1]["size_gb"] >= 1


def test_physical_disks_matching_nothing_writes_nothing(make_loop, recorder):
    devs = [make_loop(SIZE) for _ in range(2)]
    dirty(devs[0])
    before = [read_at(d, 0, 2 * MIB) for d in devs]
    config = raid1(devs)
    config["logical_disks"][0]["physical_disks"][1] = {"serial": "no-such-disk"}
    with pytest.raises(InvalidCommandParamsError, match="entry 2 matches none"):
        create(devs, config, node())
    assert [read_at(d, 0, 2 * MIB) for d in devs] == before
    assert recorder.calls == []


def test_a_mounted_member_is_refused_before_anything_is_written(make_loop, recorder,
                                                                tmp_path):
    devs = [make_loop(SIZE) for _ in range(2)]
    sh("mkfs.ext4", "-q", "-F", devs[1])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", devs[1], str(mnt))
    try:
        before = [read_at(d, 0, 2 * MIB) for d in devs]
        with pytest.raises(AgentError, match="nothing was changed.*mounted"):
            create(devs, raid1(devs), node())
        assert [read_at(d, 0, 2 * MIB) for d in devs] == before
    finally:
        sh("umount", str(mnt))
    assert recorder.calls == []


def test_failure_midway_says_what_state_the_disks_are_in(make_loop, monkeypatch):
    devs = [make_loop(1536 * MIB) for _ in range(2)]
    rec = Recorder(fail_on="/dev/md1")
    monkeypatch.setattr(apply, "create_array", rec)
    monkeypatch.setattr(apply.arrays, "ensure_driver", lambda: True)
    PLANNED.clear()
    original = apply.prepare

    def remember(*args, **kwargs):
        prepared = original(*args, **kwargs)
        PLANNED.update({d.disk: d.holders for d in prepared.plan.disks})
        return prepared

    monkeypatch.setattr(apply, "prepare", remember)
    config = {"logical_disks": [
        {"size_gb": 1, "raid_level": "1", "controller": "software", "volume_name": "root",
         "physical_disks": [{"name": d} for d in devs]},
        {"size_gb": "MAX", "raid_level": "0", "controller": "software",
         "volume_name": "data", "physical_disks": [{"name": d} for d in devs]}]}
    with pytest.raises(CleaningError) as caught:
        create(devs, config, node())
    message = caught.value.details
    assert "mdadm: cannot open /dev/md1" in message
    assert "create /dev/md0" in message and "create /dev/md1" not in message.split(
        "Done before the failure")[1].split(".")[0]
    for dev in devs:
        assert (f"{dev}: msdos table with holder partition(s) {part(dev, 1)}, {part(dev, 2)}; "
                "member of /dev/md0 (root)") in message
    assert "delete_configuration returns these disks to empty" in message
    assert len(rec.calls) == 1


def test_delete_leaves_no_table_and_no_superblock(make_loop, recorder):
    devs = [make_loop(SIZE, sector_size=s) for s in (512, 4096)]
    create(devs, raid1(devs), node("uefi"))
    # what mdadm --create would have written: a real 1.2 superblock on each holder
    set_uuid = uuid.uuid4()
    for n, dev in enumerate(devs):
        size = pt.read_table(dev).partitions[0].size_bytes
        md_superblock.write(part(dev, 1), size, raid_disks=2, dev_number=n, name="any:root",
                            set_uuid=set_uuid)
        assert "Raid Level : raid1" in sh("mdadm", "--examine", part(dev, 1)).stdout
    result = delete(devs)

    assert sorted(result["disks_wiped"]) == sorted(devs)
    assert len(result["superblocks_zeroed"]) == 2
    for dev in devs:
        assert pt.read_table(dev).kind is None
        assert signatures(dev) == ""
        assert not os.path.exists(part(dev, 1))
        assert not os.path.exists(f"/sys/class/block/{os.path.basename(part(dev, 1))}")
        # the holder's old range holds no superblock any more
        assert sh("mdadm", "--examine", dev, check=False).returncode != 0
        assert read_at(dev, 551 * MIB + 4096, 4) != md_superblock.MAGIC.to_bytes(4, "little")


def test_delete_keeps_other_partitions_and_removes_only_holders(make_loop):
    dev = make_loop(SIZE)
    sh("sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", "-n", "2:0:+64M", "-t", "2:FD00", dev)
    expose(dev)
    md_superblock.write(part(dev, 2), 64 * MIB, raid_disks=2, name="any:old")
    result = delete([dev])
    table = pt.read_table(dev)
    assert [p.number for p in table.partitions] == [1]
    assert result["holders_removed"] == {dev: [2]}
    assert not os.path.exists(part(dev, 2))


def test_delete_on_disks_without_raid_changes_nothing(make_loop):
    dev = make_loop(SIZE)
    dirty(dev)
    before = read_at(dev, 0, 2 * MIB)
    result = delete([dev])
    assert result == {"arrays_stopped": [], "disks_wiped": [], "holders_removed": {},
                      "superblocks_zeroed": []}
    assert read_at(dev, 0, 2 * MIB) == before


@pytest.mark.skipif(os.path.exists("/proc/mdstat"), reason="this kernel has md")
def test_without_an_md_driver_create_is_refused_before_anything_is_written(make_loop,
                                                                          monkeypatch):
    # no fake here: this machine's kernel really has no md driver and modprobe finds none
    rec = Recorder()
    monkeypatch.setattr(apply, "create_array", rec)
    devs = [make_loop(SIZE) for _ in range(2)]
    dirty(devs[0])
    before = [read_at(d, 0, 2 * MIB) for d in devs]
    with pytest.raises(AgentError, match="no md driver.*nothing was changed"):
        create(devs, raid1(devs), node())
    assert [read_at(d, 0, 2 * MIB) for d in devs] == before
    assert rec.calls == []
