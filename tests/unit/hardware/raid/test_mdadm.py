"""mdadm command lines and the parsers for --detail, --examine and /proc/mdstat.

The ``examine_*`` fixtures are real mdadm 4.2 output (see the fixture README);
the tests marked ``needs_mdadm`` regenerate such output with the installed
mdadm and check the parser against it, and that ``--zero-superblock`` as we
spell it really removes what ``--examine`` found.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import uuid

import pytest

from agent.hardware.raid import mdadm
from tests.unit.hardware.raid import md_superblock

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "fixtures" / "hardware" / "mdadm"
MDADM = shutil.which("mdadm")
needs_mdadm = pytest.mark.skipif(MDADM is None, reason="mdadm is not installed")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- command lines ---------------------------------------------------------------------------

def test_create_args() -> None:
    assert mdadm.create("/dev/md0", "10", ["/dev/sda1", "/dev/nvme0n1p1"], name="root") == [
        "--create", "/dev/md0", "--run", "--force", "--metadata=1.2", "--level=10",
        "--raid-devices=2", "--name=root", "--homehost=any", "--data-offset=1024K",
        "/dev/sda1", "/dev/nvme0n1p1"]


def test_create_esp_mirror_has_metadata_at_the_end_and_no_data_offset() -> None:
    args = mdadm.create("/dev/md3", "1", ["/dev/sda2", "/dev/sdb2"], name="esp",
                        metadata="1.0")
    assert "--metadata=1.0" in args and not any(a.startswith("--data-offset") for a in args)
    assert mdadm.create("/dev/md0", "1", ["a", "b"], name="r", homehost=None,
                        data_offset_kib=None)[-4:] == ["--raid-devices=2", "--name=r", "a", "b"]


@pytest.mark.parametrize("kw", [{"level": "1+0"}, {"level": "4"}, {"metadata": "0.90"},
                                {"members": []}])
def test_create_refuses_what_it_does_not_build(kw: dict) -> None:
    args = {"level": "1", "members": ["a", "b"], **kw}
    with pytest.raises(ValueError):
        mdadm.create("/dev/md0", args["level"], args["members"], name="x",
                     **{k: v for k, v in kw.items() if k == "metadata"})


def test_other_commands() -> None:
    assert mdadm.assemble_scan() == ["--assemble", "--scan"]
    assert mdadm.stop("/dev/md0") == ["--stop", "/dev/md0"]
    assert mdadm.zero_superblock("/dev/sda1") == ["--zero-superblock", "/dev/sda1"]
    assert mdadm.detail("/dev/md0") == ["--detail", "/dev/md0"]
    assert mdadm.examine("/dev/sda1") == ["--examine", "/dev/sda1"]
    assert mdadm.ENV["LC_ALL"] == "C"
    assert mdadm.no_superblock(fixture("examine_no_superblock.stderr"))
    assert not mdadm.no_superblock("mdadm: cannot open /dev/sda1: Device or resource busy")


# --- --examine (real output) -------------------------------------------------------------------

def test_examine_raid1_v12() -> None:
    (info,) = mdadm.parse_examine(fixture("examine_raid1_v12.txt"))
    assert info == {
        "device": "/tmp/raidwork/dev0.img", "magic": "a92b4efc", "version": "1.2",
        "feature_map": "0x0", "uuid": "3b2a6f7e:1c4d4e5f:8a9b0c1d:2e3f4a5b",
        "name": "deploy:root", "volume_name": "root", "level": "raid1", "raid_level": "1",
        "raid_devices": 2, "avail_dev_size": 129024 * 512, "array_size": 64512 * 1024,
        "used_dev_size": None, "data_offset": 2048 * 512, "super_offset": 8 * 512,
        "state": "clean", "device_uuid": "df35a24e:600b4eba:9ccaa95a:44e5f273", "events": 18,
        "checksum_ok": True, "layout": None, "chunk_size": None, "role": 1,
        "role_kind": "active", "array_state": "AA"}


@pytest.mark.parametrize("name, expected", [
    ("examine_esp_raid1_v10.txt", {"version": "1.0", "volume_name": "esp", "data_offset": None,
                                   "super_offset": 131056 * 512, "role": 0}),
    ("examine_raid5_v12.txt", {"raid_level": "5", "layout": "left-symmetric",
                               "chunk_size": "512K", "role": 2, "array_state": "AAA"}),
    ("examine_raid10_v12.txt", {"raid_level": "1+0", "layout": "near=2", "role": 3,
                                "array_size": 129024 * 1024}),
    ("examine_raid6_degraded_v12.txt", {"raid_level": "6", "array_state": "AA.A"}),
    ("examine_raid0_v12.txt", {"raid_level": "0", "level": "raid0"}),
    ("examine_spare_v12.txt", {"role": None, "role_kind": "spare"}),
])
def test_examine_fixtures(name: str, expected: dict) -> None:
    (info,) = mdadm.parse_examine(fixture(name))
    assert {k: info[k] for k in expected} == expected
    assert info["checksum_ok"] is True and info["magic"] == "a92b4efc"


def test_examine_several_devices_and_nothing() -> None:
    text = fixture("examine_raid1_v12.txt") + fixture("examine_spare_v12.txt")
    assert [i["role_kind"] for i in mdadm.parse_examine(text)] == ["active", "spare"]
    assert mdadm.parse_examine("") == []


@needs_mdadm
@pytest.mark.parametrize("version, level, chunk, layout, schema", [
    ("1.2", 1, 0, 0, "1"), ("1.0", 1, 0, 0, "1"), ("1.2", 5, 1024, 2, "5"),
    ("1.2", 10, 1024, 0x102, "1+0"), ("1.2", 6, 1024, 2, "6"), ("1.2", 0, 1024, 0, "0")])
def test_real_mdadm_examine_and_zero_superblock(tmp_path: pathlib.Path, version: str,
                                                level: int, chunk: int, layout: int,
                                                schema: str) -> None:
    member = tmp_path / "member.img"
    size = 48 << 20
    member.write_bytes(b"")
    with open(member, "r+b") as f:
        f.truncate(size)
    set_uuid = uuid.UUID("11223344-5566-7788-99aa-bbccddeeff00")
    md_superblock.write(str(member), size, version=version, level=level, raid_disks=4,
                        dev_number=2, name="any:vol-1", set_uuid=set_uuid, roles=[0, 1, 2, 3],
                        layout=layout, chunk_sectors=chunk)
    run = [MDADM or "mdadm", *mdadm.examine(str(member))]
    proc = subprocess.run(run, capture_output=True, text=True, env=mdadm.ENV, check=True)
    (info,) = mdadm.parse_examine(proc.stdout)
    assert info["device"] == str(member)
    assert (info["version"], info["raid_level"], info["raid_devices"]) == (version, schema, 4)
    assert (info["name"], info["volume_name"]) == ("any:vol-1", "vol-1")
    assert info["uuid"] == "11223344:55667788:99aabbcc:ddeeff00"
    assert (info["role"], info["array_state"], info["checksum_ok"]) == (2, "AAAA", True)
    where = info["super_offset"]
    assert where == (4096 if version == "1.2" else (size // 512 - 16) // 8 * 8 * 512)

    subprocess.run([MDADM or "mdadm", *mdadm.zero_superblock(str(member))], check=True,
                   env=mdadm.ENV, capture_output=True)
    again = subprocess.run(run, capture_output=True, text=True, env=mdadm.ENV)
    assert again.returncode != 0 and mdadm.no_superblock(again.stderr)
    assert mdadm.parse_examine(again.stdout) == []


# --- --detail (format fixtures) --------------------------------------------------------------

def test_detail_clean_raid1() -> None:
    info = mdadm.parse_detail(fixture("detail_raid1_clean.txt"))
    assert {k: info[k] for k in ("device", "version", "level", "raid_level", "array_size",
                                 "used_dev_size", "raid_devices", "total_devices", "state",
                                 "degraded", "name", "volume_name", "uuid", "events",
                                 "consistency_policy", "sync_status")} == {
        "device": "/dev/md0", "version": "1.2", "level": "raid1", "raid_level": "1",
        "array_size": 10476544 * 1024, "used_dev_size": 10476544 * 1024, "raid_devices": 2,
        "total_devices": 2, "state": ["clean"], "degraded": False, "name": "any:root",
        "volume_name": "root", "uuid": "3b2a6f7e:1c4d4e5f:8a9b0c1d:2e3f4a5b", "events": 17,
        "consistency_policy": "resync", "sync_status": None}
    assert info["members"] == [
        {"number": 0, "major": 252, "minor": 2, "role": 0, "state": ["active", "sync"],
         "device": "/dev/vda2"},
        {"number": 1, "major": 252, "minor": 18, "role": 1, "state": ["active", "sync"],
         "device": "/dev/vdb2"}]
    assert info["component_devices"] == ["/dev/vda2", "/dev/vdb2"]


def test_detail_degraded_with_removed_and_faulty() -> None:
    info = mdadm.parse_detail(fixture("detail_raid1_degraded.txt"))
    assert info["state"] == ["clean", "degraded"] and info["degraded"]
    assert (info["active_devices"], info["failed_devices"]) == (1, 1)
    assert info["volume_name"] == "root" and info["name"] == "deploy:root"
    assert [(m["number"], m["role"], m["state"], m["device"]) for m in info["members"]] == [
        (None, 0, ["removed"], None), (1, 1, ["active", "sync"], "/dev/vdb2"),
        (0, None, ["faulty"], "/dev/vda2")]
    assert info["component_devices"] == ["/dev/vdb2"]


def test_detail_raid5_rebuilding_with_spare() -> None:
    info = mdadm.parse_detail(fixture("detail_raid5_rebuilding.txt"))
    assert info["raid_level"] == "5" and info["state"] == ["clean", "degraded", "recovering"]
    assert (info["layout"], info["chunk_size"], info["sync_status"]) == (
        "left-symmetric", "512K", "8% complete")
    assert [(m["role"], m["state"]) for m in info["members"]] == [
        (0, ["active", "sync"]), (1, ["active", "sync"]), (2, ["spare", "rebuilding"]),
        (None, ["spare"])]
    assert info["component_devices"] == ["/dev/vda3", "/dev/vdb3", "/dev/vdc3", "/dev/vdd3"]


def test_detail_raid10_nvme_sets() -> None:
    info = mdadm.parse_detail(fixture("detail_raid10_nvme.txt"))
    assert (info["raid_level"], info["layout"], info["sync_status"]) == (
        "1+0", "near=2", "0% complete")
    assert info["members"][1]["state"] == ["active", "sync", "set-B"]
    assert info["component_devices"][3] == "/dev/nvme3n1p1"


# --- /proc/mdstat (format fixtures) ------------------------------------------------------------

def test_mdstat_mixed() -> None:
    stat = mdadm.parse_mdstat(fixture("mdstat_mixed.txt"))
    assert stat["personalities"] == ["raid1", "raid6", "raid5", "raid4", "raid10", "raid0"]
    assert stat["unused"] == []
    assert list(stat["arrays"]) == ["md1", "md0", "md2", "md127"]
    md1 = stat["arrays"]["md1"]
    assert {k: md1[k] for k in ("state", "level", "raid_level", "size", "metadata", "raid_disks",
                                "working_disks", "status", "degraded", "sync")} == {
        "state": "active", "level": "raid5", "raid_level": "5", "size": 2093056 * 1024,
        "metadata": "1.2", "raid_disks": 3, "working_disks": 2, "status": "UU_",
        "degraded": True, "sync": {"action": "recovery", "percent": 8.2}}
    assert md1["members"] == [
        {"device": "vda3", "slot": 0, "flags": []}, {"device": "vdb3", "slot": 1, "flags": []},
        {"device": "vdc3", "slot": 3, "flags": []},
        {"device": "vdd3", "slot": 4, "flags": ["spare"]}]
    md0 = stat["arrays"]["md0"]
    assert (md0["status"], md0["degraded"]) == ("_U", True)
    assert md0["members"][0] == {"device": "vda2", "slot": 0, "flags": ["faulty"]}
    md2 = stat["arrays"]["md2"]
    assert (md2["read_only"], md2["level"], md2["degraded"], md2["sync"]) == (
        "auto-read-only", "raid10", False, None)
    md127 = stat["arrays"]["md127"]
    assert (md127["state"], md127["level"], md127["status"]) == ("inactive", None, None)
    assert md127["members"] == [{"device": "sde1", "slot": 1, "flags": ["spare"]}]


def test_mdstat_empty_and_unused() -> None:
    assert mdadm.parse_mdstat(fixture("mdstat_empty.txt")) == {
        "personalities": [], "arrays": {}, "unused": []}
    assert mdadm.parse_mdstat("Personalities : [raid1]\nunused devices: sdc sdd\n")[
        "unused"] == ["sdc", "sdd"]
