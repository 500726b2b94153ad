"""Software RAID boot: byte patching, array lookup, the mirror's mdadm call, dispatch.

The loop-disk tests in tests/functional/imaging/bootloader/test_bootloader_raid_loop.py
run the same code against real tables, grub and mtools.
"""

from __future__ import annotations

import os
import struct
import types

import pytest

from agent import config, hardware
from agent.errors import CommandExecutionError, DeploymentError, DeviceNotFound
from agent.hardware.disks import Disk
from agent.hardware.raid.arrays import MdArray
from agent.imaging import partition_deploy
from agent.imaging.bootloader import Request, install_bootloader, raid, raid_bios, raid_uefi, uefi
from agent.state import AgentState


def boot_img() -> bytes:
    return bytes(range(255)) * 2 + b"\x55\xaa"


def array(**kw) -> MdArray:
    fields = dict(kname="md127", level="1", state="clean", members=("/dev/sda2", "/dev/sdb2"),
                  member_disks=("/dev/sda", "/dev/sdb"), size=1 << 30, volume_name="root",
                  links=("/dev/md/root",))
    return MdArray(**{**fields, **kw})


def test_patch_boot_sets_the_core_sector_and_keeps_the_table_area_out():
    code = raid_bios.patch_boot(boot_img(), 2048)
    assert len(code) == 440                       # never reaches signature or table
    assert struct.unpack_from("<Q", code, 0x5C)[0] == 2048
    assert code[0x66:0x68] == b"\x90\x90"
    with pytest.raises(CommandExecutionError, match="not a 512-byte boot sector"):
        raid_bios.patch_boot(bytes(512), 1)


def test_patch_core_blocklist_loads_the_rest_from_the_next_sector():
    core = raid_bios.patch_core(b"\x01" * 1000, 34)
    assert len(core) == 1024
    assert struct.unpack_from("<QHH", core, 500) == (35, 1, 0x820)
    assert core[:500] == b"\x01" * 500 and core[512:1000] == b"\x01" * 488
    with pytest.raises(CommandExecutionError, match="cannot be loaded"):
        raid_bios.patch_core(b"\x01" * 512, 34)


def test_array_for_matches_by_name_link_or_kernel_name(monkeypatch):
    monkeypatch.setattr(raid, "list_arrays", lambda: [array()])
    assert raid.array_for(Disk(name="/dev/md127", size=1, kind="md")).kname == "md127"
    assert raid.array_for(Disk(name="/dev/md/root", size=1, kind="md")).kname == "md127"
    assert raid.array_for(Disk(name="/dev/x", size=1, kname="md127", kind="md")) is not None
    assert raid.array_for(Disk(name="/dev/sda", size=1)) is None
    assert raid.array_for(types.SimpleNamespace(name="/dev/sdz")) is None


def test_md_disk_without_a_listed_array_is_an_error(monkeypatch):
    monkeypatch.setattr(raid, "list_arrays", lambda: [])
    with pytest.raises(DeviceNotFound, match="/dev/md5 is an md device, but the kernel lists "
                       "no running array"):
        raid.array_for(Disk(name="/dev/md5", size=1, kind="md"))


def test_member_disks_refuses_nested_and_empty_arrays():
    assert raid.member_disks(array()) == ["/dev/sda", "/dev/sdb"]
    with pytest.raises(CommandExecutionError, match="built on other md devices \\(/dev/md1"):
        raid.member_disks(array(member_disks=("/dev/md1", "/dev/md2")))
    with pytest.raises(DeviceNotFound, match="lists no member disks"):
        raid.member_disks(array(member_disks=()))


def test_esp_mirror_is_raid1_with_metadata_at_the_end(monkeypatch):
    runs = []
    monkeypatch.setattr(raid, "list_arrays", lambda: [array(kname="md0")])
    monkeypatch.setattr(raid_uefi.tools, "run", lambda *a, **kw: runs.append((a, kw)))
    monkeypatch.setattr(raid_uefi.os.path, "exists", lambda p: p == "/dev/md1")
    device = raid_uefi.create_mirror(["/dev/sda2", "/dev/sdb2"], "esp")
    assert device == "/dev/md1"
    (args, kw), = runs
    assert args == ("mdadm", "--create", "/dev/md1", "--run", "--force", "--metadata=1.0",
                    "--level=1", "--raid-devices=2", "--name=esp", "--homehost=any",
                    "/dev/sda2", "/dev/sdb2")
    assert kw["env"]["LC_ALL"] == "C"


@pytest.fixture
def md_state(monkeypatch):
    disk = Disk(name="/dev/md127", size=1 << 30, kname="md127", kind="md")
    monkeypatch.setattr(hardware, "find_install_disk", lambda st, ctx=None: (disk, "hint"))
    monkeypatch.setattr(raid, "list_arrays", lambda: [array()])
    return AgentState(config.load(read_proc=False, env={}, flags={}))


def test_dispatch_bios_uefi_and_ppc64(md_state, monkeypatch):
    seen = []
    monkeypatch.setattr(raid_bios, "install",
                        lambda md, members, root: seen.append(("bios", md, members, root)))
    monkeypatch.setattr(raid_uefi, "install", lambda md, members, esp, *, arch: seen.append(
        ("uefi", md, members, esp)))
    monkeypatch.setattr(uefi, "EFI_SYSFS", "/nonexistent/efi")   # a BIOS-booted ramdisk
    assert install_bootloader(md_state, Request(root_uuid="u"), arch="x86_64").path == \
        "raid-bios"
    assert install_bootloader(md_state, Request(target_boot_mode="uefi"),
                              arch="x86_64").path == "raid-uefi"
    assert seen == [("bios", "/dev/md127", ["/dev/sda", "/dev/sdb"], "u"),
                    ("uefi", "/dev/md127", ["/dev/sda", "/dev/sdb"], None)]
    with pytest.raises(CommandExecutionError, match="booting ppc64 from a software RAID"):
        install_bootloader(md_state, Request(), arch="ppc64le")
    outcome = install_bootloader(md_state, Request(ignore_failure=True), arch="ppc64le")
    assert outcome.path == "ignored"
    assert outcome.ignored[0].startswith("software RAID boot: booting ppc64")


def md_sysfs(tmp_path) -> str:
    """/sys/class/block shaped as the kernel shows an md array with one partition."""
    devices = tmp_path / "devices" / "virtual" / "block" / "md127"
    (devices / "md" / "dev-sda2").mkdir(parents=True)
    (devices / "md" / "level").write_text("raid1\n")
    (devices / "slaves").mkdir()
    (devices / "holders").mkdir()
    (devices / "dev").write_text("9:127\n")
    part = devices / "md127p1"
    part.mkdir()
    for name, value in (("partition", "1"), ("start", "2048"), ("size", "4096"),
                        ("dev", "259:3")):
        (part / name).write_text(value + "\n")
    cls = tmp_path / "class" / "block"
    cls.mkdir(parents=True)
    os.symlink(devices, cls / "md127")
    os.symlink(part, cls / "md127p1")
    return str(cls)


def test_reread_reads_an_md_device_like_a_disk(tmp_path, monkeypatch):
    from agent.disk import reread
    monkeypatch.setattr(reread, "SYS_BLOCK", md_sysfs(tmp_path))
    assert reread.disk_name("/dev/md127") == "md127"
    # md/, slaves/ and holders/ sit beside the partitions and are no partitions
    assert reread._sysfs_partitions("md127") == {"md127p1": (1, 2048 * 512, 4096 * 512)}
    assert reread.partition_device("/dev/md127", 1) == "/dev/md127p1"
    assert reread.partition_device("/dev/md127", 2) == "/dev/md127p2"
    assert reread.partition_parent("/dev/md127p1") == ("/dev/md127", 1)


def test_partition_images_are_refused_on_md(tmp_path, monkeypatch):
    from agent.disk import reread
    monkeypatch.setattr(reread, "SYS_BLOCK", md_sysfs(tmp_path))
    with pytest.raises(DeploymentError, match="partition images cannot be deployed onto the "
                       "software RAID device /dev/md127"):
        partition_deploy.plan(None, None, "/dev/md127", None)   # type: ignore[arg-type]
    partition_deploy.refuse_md("/dev/sda")    # not md: no objection
