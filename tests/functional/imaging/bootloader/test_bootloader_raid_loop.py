"""Software RAID boot on real loop disks: boot code and ESPs on every member disk.

This kernel has no md driver, so the array is simulated: one loop device holds
what the md device would show (the deployed whole-disk image: GPT, ext4 root,
ESP), and other loop devices stand in for the member disks, each with a
holder partition behind the boot room the RAID step leaves.  The member list
comes in through the ``raid.list_arrays`` seam, and the ESP mirror through
``raid_uefi.create_mirror`` (metadata 1.0 puts the data at the start of each
member, so the first member's ESP partition is what the mirror would show).
Real: sgdisk, grub-mkimage and the host's grub modules, mtools, ext4 mounts,
every byte written and read back.  Faked: md, and NVRAM (efibootmgr).
"""

from __future__ import annotations

import os
import struct
import subprocess

import pytest

from agent.disk import partition_table as pt
from agent.errors import CommandExecutionError, DeviceNotFound, InvalidImage
from agent.hardware.raid.arrays import MdArray
from agent.imaging.bootloader import Request, install_bootloader, raid, raid_bios, raid_uefi
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import agent_state
from tests.functional.imaging.bootloader.rootfs import assert_clean, read_head

pytestmark = requires_loop
MIB = rootfs.MIB
RAID_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"
GRUB_DIR = "/usr/lib/grub/i386-pc"
needs_grub = pytest.mark.skipif(
    not os.path.isfile(os.path.join(GRUB_DIR, "mdraid1x.mod")),
    reason="needs Debian grub-common and grub-pc-bin on the host")
SHIM = {
    "EFI/debian/BOOTX64.CSV": rootfs.shim_csv("shimx64.efi", "debian"),
    "EFI/debian/shimx64.efi": b"MZ shim",
    "EFI/debian/grubx64.efi": b"MZ grub",
    "EFI/debian/grub.cfg": b"search.fs_uuid 1234 root\n",
    "EFI/BOOT/BOOTX64.EFI": b"MZ shim copy",
}


def gpt_member(make_loop, room_sectors: int, size: int = 24 * MIB) -> str:
    """A member disk: GPT with one RAID holder partition after ``room_sectors`` of room."""
    dev = make_loop(size)
    start = 2048 + room_sectors if room_sectors >= 2048 else room_sectors
    rootfs.sh("sgdisk", "-o", "-a", "1", "-n", f"1:{start}:-1M", "-t", f"1:{RAID_TYPE}", dev)
    rootfs.expose(dev)
    return dev


def mbr_member(make_loop, start: int = 2048) -> str:
    dev = make_loop(24 * MIB)
    rootfs.msdos(dev, [f"start={start}, type=fd"])
    return dev


def md_standin(make_loop, parts: list[tuple[int, str]], fill) -> tuple[str, list[str]]:
    """What the md device shows after the whole-disk image was written onto it."""
    dev = make_loop(96 * MIB)
    nodes = rootfs.gpt(dev, parts)
    fill(nodes)
    return dev, nodes


def grub_root(files: dict[str, str]):
    def populate(mnt: str) -> None:
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(mnt, path)), exist_ok=True)
            with open(os.path.join(mnt, path), "w") as f:
                f.write(text)
    return populate


def as_array(md: str, members: list[str]) -> MdArray:
    return MdArray(kname=os.path.basename(md), level="1", state="clean",
                   members=tuple(rootfs.part(m, 1) for m in members),
                   member_disks=tuple(members), size=0, volume_name="root")


@pytest.fixture
def arrays(monkeypatch):
    """Install the simulated array: ``arrays(md, members)``."""
    def install(md: str, members: list[str], extra: tuple[MdArray, ...] = ()) -> MdArray:
        array = as_array(md, members)
        monkeypatch.setattr(raid, "list_arrays", lambda: [array, *extra])
        return array
    return install


def expected_core(tmp_path, fs_uuid: str, prefix: str) -> bytes:
    """core.img as grub-mkimage builds it for this config (it is deterministic)."""
    cfg = tmp_path / "expected.cfg"
    cfg.write_text(f"search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
                   f"set prefix=($root){prefix}\n")
    out = tmp_path / "expected-core.img"
    subprocess.run(["grub-mkimage", "-O", "i386-pc", "-d", GRUB_DIR, "-o", str(out), "-c",
                    str(cfg), "-p", prefix, *raid_bios.MODULES], check=True)
    return out.read_bytes()


def check_member(dev: str, lba: int, core: bytes, head_before: bytes) -> None:
    with open(os.path.join(GRUB_DIR, "boot.img"), "rb") as f:
        boot = f.read()
    mbr = read_head(dev)
    assert mbr[:0x5C] == boot[:0x5C]                                  # boot.img's code
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == lba              # kernel sector
    assert mbr[0x66:0x68] == b"\x90\x90"                              # drive check off
    assert mbr[0x68:440] == boot[0x68:440]
    assert mbr[440:] == head_before[440:]                             # table and signature
    sectors = -(-len(core) // 512)
    on_disk = read_head(dev, sectors * 512, lba * 512)
    assert struct.unpack_from("<QHH", on_disk, 500) == (lba + 1, sectors - 1, 0x820)
    padded = core.ljust(sectors * 512, b"\0")
    assert on_disk[:500] == padded[:500] and on_disk[512:] == padded[512:]


@needs_grub
@pytest.mark.usefixtures("bios_booted")
def test_bios_gpt_members_get_a_bios_boot_partition_and_grub_that_reads_the_array(
        make_loop, arrays, tmp_path):
    members = [gpt_member(make_loop, 2048), gpt_member(make_loop, 2048)]
    heads = [read_head(m) for m in members]
    md, (root,) = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: rootfs.fill_ext4(
        n[0], grub_root({"boot/grub/grub.cfg": "menuentry x {}\n"})))
    uuid = rootfs.fs_uuid(root)
    arrays(md, members)
    # default config: enable_bios_bootloader_install is off, and this path needs no opt-in
    outcome = install_bootloader(agent_state(md), Request(root_uuid=uuid), arch="x86_64")
    assert outcome.path == "raid-bios" and outcome.ignored == []
    assert outcome.raid.config == raid_bios.GrubConfig(root, uuid, "/boot/grub")
    core = expected_core(tmp_path, uuid, "/boot/grub")
    for member, head in zip(members, heads, strict=True):
        table = pt.read_table(member)
        boot_part = table.get(2)
        assert boot_part is not None and boot_part.type_guid == pt.BIOS_BOOT_GUID
        assert (boot_part.first_lba, boot_part.last_lba) == (2048, 4095)
        assert table.get(1).first_lba == 4096                           # holder untouched
        check_member(member, 2048, core, head)
    assert_clean(md)


@needs_grub
@pytest.mark.usefixtures("bios_booted")
def test_bios_mbr_members_use_the_gap_and_a_separate_boot_is_found(make_loop, arrays,
                                                                     tmp_path):
    members = [mbr_member(make_loop), mbr_member(make_loop)]
    heads = [read_head(m) for m in members]

    def fill(nodes: list[str]) -> None:
        rootfs.fill_ext4(nodes[0], grub_root({"grub/grub.cfg": "menuentry x {}\n"}), "boot")
        rootfs.fill_ext4(nodes[1], grub_root({"etc/fstab": "\n"}))
    md, (boot, _root) = md_standin(make_loop, [(32, rootfs.LINUX_TYPE),
                                               (0, rootfs.LINUX_TYPE)], fill)
    arrays(md, members)
    # a whole-disk id instead of a filesystem UUID: every partition is looked at
    outcome = install_bootloader(agent_state(md), Request(root_uuid="0x1234abcd"),
                                 arch="x86_64")
    assert outcome.path == "raid-bios"
    boot_uuid = rootfs.fs_uuid(boot)
    assert outcome.raid.config == raid_bios.GrubConfig(boot, boot_uuid, "/grub")
    core = expected_core(tmp_path, boot_uuid, "/grub")
    for member, head in zip(members, heads, strict=True):
        assert [p.number for p in pt.read_table(member).partitions] == [1]
        check_member(member, 1, core, head)


@needs_grub
@pytest.mark.usefixtures("bios_booted")
def test_bios_member_without_room_fails_before_any_member_is_written(make_loop, arrays):
    good, cramped = gpt_member(make_loop, 2048), gpt_member(make_loop, 256)
    heads = [read_head(good), read_head(cramped)]
    md, _ = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: rootfs.fill_ext4(
        n[0], grub_root({"boot/grub2/grub.cfg": "menuentry x {}\n"})))
    arrays(md, [good, cramped])
    with pytest.raises(CommandExecutionError, match=f"the RAID member {cramped} has no room "
                       "for a BIOS boot partition: 222 free sectors"):
        install_bootloader(agent_state(md), Request(), arch="x86_64")
    assert [read_head(good), read_head(cramped)] == heads
    assert_clean(md)


@needs_grub
@pytest.mark.usefixtures("bios_booted")
def test_bios_core_img_too_big_for_an_existing_bios_boot_partition(make_loop, arrays):
    member = make_loop(24 * MIB)
    rootfs.sh("sgdisk", "-o", "-n", "1:2048:2111", "-t", "1:EF02", "-n", "2:4096:-1M",
              "-t", f"2:{RAID_TYPE}", member)
    head = read_head(member)
    md, _ = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: rootfs.fill_ext4(
        n[0], grub_root({"boot/grub/grub.cfg": "menuentry x {}\n"})))
    arrays(md, [member])
    with pytest.raises(CommandExecutionError, match="the BIOS boot partition 1 on .* holds "
                       "64 sectors; the boot code needs [0-9]+"):
        install_bootloader(agent_state(md), Request(), arch="x86_64")
    assert read_head(member) == head


@needs_grub
@pytest.mark.usefixtures("bios_booted")
def test_bios_no_grub_cfg_is_invalid_image_or_ignored(make_loop, arrays):
    members = [gpt_member(make_loop, 2048)]
    head = read_head(members[0])
    md, (root,) = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: rootfs.fill_ext4(
        n[0], grub_root({"etc/fstab": "\n"})))
    arrays(md, members)
    request = Request(root_uuid=rootfs.fs_uuid(root))
    with pytest.raises(InvalidImage, match=f"no filesystem on {md} holds a grub.cfg .*"
                       f"{root} \\(ext4, no grub.cfg\\)"):
        install_bootloader(agent_state(md), request, arch="x86_64")
    outcome = install_bootloader(agent_state(md), Request(root_uuid=request.root_uuid,
                                                          ignore_failure=True), arch="x86_64")
    assert outcome.path == "ignored" and "no filesystem on" in outcome.ignored[0]
    assert read_head(members[0]) == head
    assert_clean(md)


@pytest.mark.usefixtures("bios_booted")
def test_bios_missing_grub_mkimage_or_modules(make_loop, arrays, monkeypatch, tmp_path):
    members = [gpt_member(make_loop, 2048)]
    md, _ = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: None)
    arrays(md, members)
    partial = tmp_path / "grub"
    partial.mkdir()
    (partial / "boot.img").write_bytes(b"\0" * 510 + b"\x55\xaa")
    (partial / "biosdisk.mod").write_bytes(b"")
    monkeypatch.setattr(raid_bios, "GRUB_DIR", str(partial))
    if raid_bios.tools.which("grub-mkimage"):
        with pytest.raises(CommandExecutionError, match="lacks part_gpt, part_msdos, .*"
                           "mdraid1x.*\\(Debian package grub-pc-bin\\)"):
            install_bootloader(agent_state(md), Request(), arch="x86_64")
    which = raid_bios.tools.which
    monkeypatch.setattr(raid_bios.tools, "which",
                        lambda name: None if name == "grub-mkimage" else which(name))
    with pytest.raises(CommandExecutionError, match="grub-mkimage is not installed in the "
                       "ramdisk \\(Debian package grub-common\\)"):
        install_bootloader(agent_state(md), Request(), arch="x86_64")


# --- UEFI -------------------------------------------------------------------------------

def esp_files(node: str) -> dict[str, bytes]:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = rootfs.sh("mdir", "-/", "-b", "-i", node, "::/", env=env).stdout.split()
    return {p[3:]: rootfs.sh("mtype", "-i", node, p, env=env, input=b"").stdout
            for p in listing if not p.endswith("/")}


@pytest.fixture
def mirror(monkeypatch):
    """ESP mirror stand-in: the first member's ESP, as metadata 1.0 would expose it."""
    made: list[tuple[list[str], str]] = []

    def create(partitions: list[str], name: str) -> str:
        made.append((list(partitions), name))
        return partitions[0]
    monkeypatch.setattr(raid_uefi, "create_mirror", create)
    return made


def uefi_setup(make_loop, arrays, room_mb: int = 550):
    members = [gpt_member(make_loop, room_mb * 2048, size=(room_mb + 8) * MIB)
               for _ in range(2)]

    def fill(nodes: list[str]) -> None:
        rootfs.make_esp(nodes[0], SHIM)
        rootfs.sh("mkfs.ext4", "-q", "-F", nodes[1])
    md, _ = md_standin(make_loop, [(40, rootfs.ESP_TYPE), (0, rootfs.LINUX_TYPE)], fill)
    arrays(md, members)
    return md, members


@pytest.mark.usefixtures("uefi_booted")
def test_uefi_esp_on_every_member_mirrored_and_one_entry_each(make_loop, arrays, mirror,
                                                               fake_efi):
    md, members = uefi_setup(make_loop, arrays)
    request = Request(root_uuid="0x1234abcd", target_boot_mode="uefi")
    outcome = install_bootloader(agent_state(md), request, arch="x86_64")
    assert outcome.path == "raid-uefi" and outcome.ignored == []
    esps = [rootfs.part(m, 2) for m in members]
    assert mirror == [(esps, "esp")]
    for member in members:
        esp = pt.read_table(member).get(2)
        assert esp.type_guid == pt.ESP_GUID and esp.name == "efi-part"
        assert (esp.first_lba, esp.size_bytes) == (2048, 550 * MIB)
    assert esp_files(esps[0]) == SHIM
    shim = "\\EFI\\debian\\shimx64.efi"
    assert fake_efi.calls() == [
        ["-v"],
        ["-c", "-d", members[1], "-p", "2", "-w", "-L", "debian (RAID, part1)", "-l", shim],
        ["-v"],
        ["-c", "-d", members[0], "-p", "2", "-w", "-L", "debian (RAID, part0)", "-l", shim],
    ]
    assert [e.label for e in outcome.raid.entries] == ["debian (RAID, part0)",
                                                       "debian (RAID, part1)"]

    # a second deploy reuses the member ESPs, refills them and replaces its own entries
    rootfs.sh("mkfs.vfat", "-F", "32", esps[0])
    first = [e.number for e in outcome.raid.entries]
    again = install_bootloader(agent_state(md), request, arch="x86_64")
    assert [m.created for m in again.raid.members] == [False, False]
    assert [p.number for p in pt.read_table(members[0]).partitions] == [1, 2]
    assert esp_files(esps[0]) == SHIM
    deleted = [c[1] for c in fake_efi.calls()[4:] if "-B" in c]
    assert sorted(deleted) == sorted(first)


@pytest.mark.usefixtures("uefi_booted")
def test_uefi_needs_gpt_members_and_an_image_esp(make_loop, arrays, mirror, fake_efi):
    mbr = mbr_member(make_loop)
    md, _ = md_standin(make_loop, [(40, rootfs.ESP_TYPE), (0, rootfs.LINUX_TYPE)],
                       lambda n: rootfs.make_esp(n[0], SHIM))
    arrays(md, [mbr])
    request = Request(target_boot_mode="uefi")
    with pytest.raises(CommandExecutionError, match="has an MBR partition table; UEFI boot "
                       "from software RAID needs GPT members"):
        install_bootloader(agent_state(md), request, arch="x86_64")
    bios_only, _ = md_standin(make_loop, [(0, rootfs.LINUX_TYPE)], lambda n: None)
    arrays(bios_only, [gpt_member(make_loop, 550 * 2048, size=560 * MIB)])
    with pytest.raises(DeviceNotFound, match="No EFI partition could be detected"):
        install_bootloader(agent_state(bios_only), request, arch="x86_64")
    assert mirror == [] and fake_efi.calls() == []


@pytest.mark.usefixtures("uefi_booted")
def test_uefi_member_without_room_for_an_esp(make_loop, arrays, mirror, fake_efi):
    md, members = uefi_setup(make_loop, arrays, room_mb=1)
    with pytest.raises(CommandExecutionError, match="has no room for an EFI system partition: "
                       "1 MiB free"):
        install_bootloader(agent_state(md), Request(target_boot_mode="uefi"), arch="x86_64")
    assert [len(pt.read_table(m).partitions) for m in members] == [1, 1]
    assert mirror == [] and fake_efi.calls() == []
