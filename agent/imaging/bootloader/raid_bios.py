"""Legacy BIOS boot from a software RAID install disk: grub on every member disk.

The BIOS loads the MBR of whichever member it picks, so every member gets the
same chain: boot.img's code in its MBR, pointing at a core.img in its BIOS boot
partition (GPT) or in the gap before its first partition (MBR).  The core.img
is built here with the ramdisk's own ``grub-mkimage`` and carries everything
needed to assemble the array (diskfilter, mdraid, RAID-5/6 recovery), read the
filesystem holding the image's grub.cfg, and find it by UUID; from there the
image's own grub.cfg takes over.  A degraded array still boots because each
member carries the whole chain.

This path runs no code from the tenant image (only the ramdisk's grub-mkimage
and our own writes), so unlike the image-grub path it is not gated by
``enable_bios_bootloader_install`` (CVE-2026-43003).  Only the image's
grub.cfg is read, from a read-only mount.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import tempfile

from agent import tools
from agent.disk import mounts
from agent.disk import partition_table as pt
from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import devices, raid

LOG = logging.getLogger(__name__)

GRUB_DIR = "/usr/lib/grub/i386-pc"
SECTOR = 512
MBR_CODE_END = 440              # disk signature and partition table follow: kept as they are
KERNEL_SECTOR = 0x5C            # boot.img: u64 LBA of core.img's first sector
DRIVE_CHECK = 0x66              # boot.img: jump taken for a suspicious drive number
BLOCKLIST = SECTOR - 12         # core.img sector 0: u64 start, u16 sectors, u16 segment
CORE_SEGMENT = 0x820            # where diskboot loads the rest of core.img
MODULES = ("biosdisk", "part_gpt", "part_msdos", "diskfilter", "mdraid1x", "mdraid09",
           "raid5rec", "raid6rec", "lvm", "ext2", "xfs", "btrfs", "fat", "search",
           "search_fs_uuid", "search_fs_file", "search_label", "normal", "configfile",
           "linux", "boot", "echo", "test", "gzio", "gettext", "loadenv", "minicmd",
           "serial", "terminal", "sleep")
# filesystems the core.img can read (modules above), as blkid names them
READABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs")
# (path inside the filesystem, grub prefix): a root filesystem, then a separate /boot
CONFIGS = (("boot/grub/grub.cfg", "/boot/grub"), ("boot/grub2/grub.cfg", "/boot/grub2"),
           ("grub/grub.cfg", "/grub"), ("grub2/grub.cfg", "/grub2"))
NO_REPLAY = {"ext3": ("noload",), "ext4": ("noload",), "xfs": ("norecovery",)}
BIOS_BOOT_CODE = "EF02"
BIOS_BOOT_SECTORS = raid.MiB // SECTOR


@dataclasses.dataclass(frozen=True)
class GrubConfig:
    device: str                 # partition of the md device holding grub.cfg
    fs_uuid: str
    prefix: str                 # grub directory inside that filesystem


@dataclasses.dataclass(frozen=True)
class CoreArea:
    disk: str
    first_lba: int
    sectors: int
    partition: int | None       # the BIOS boot partition's number; None: the MBR gap
    created: bool = False


@dataclasses.dataclass
class BiosOutcome:
    config: GrubConfig
    core_bytes: int
    members: list[CoreArea]


def check_grub(grub_dir: str | None = None) -> str:
    """The i386-pc module directory, with boot.img and every module the core.img needs."""
    grub_dir = grub_dir or GRUB_DIR
    if tools.which("grub-mkimage") is None:
        raise CommandExecutionError("grub-mkimage is not installed in the ramdisk (Debian "
                                    "package grub-common); software RAID cannot be made "
                                    "bootable in BIOS mode")
    missing = [m for m in MODULES if not os.path.isfile(os.path.join(grub_dir, f"{m}.mod"))]
    if not os.path.isfile(os.path.join(grub_dir, "boot.img")):
        missing.insert(0, "boot.img")
    if missing:
        raise CommandExecutionError(
            f"the ramdisk's grub for i386-pc in {grub_dir} lacks {', '.join(missing)} "
            "(Debian package grub-pc-bin); software RAID cannot be made bootable in BIOS mode")
    return grub_dir


def find_config(md_device: str, root_uuid: str | None) -> GrubConfig:
    """The filesystem on the array holding grub.cfg: the root by UUID first, then any."""
    view = devices.DiskView(md_device)
    candidates = list(view.partitions)
    if root_uuid and not devices.is_whole_disk_id(root_uuid):
        root = view.by_uuid(root_uuid)
        if root is None:
            LOG.warning("no partition of %s has UUID %s; looking for grub.cfg on all of them",
                        md_device, root_uuid)
        else:
            candidates.remove(root)
            candidates.insert(0, root)
    checked = []
    for part in candidates:
        fstype, uuid = _probe(part.node)
        if fstype not in READABLE or not uuid:
            checked.append(f"{part.node} ({fstype or 'no filesystem'})")
            continue
        found = _grub_cfg(part.node, fstype)
        if found is not None:
            LOG.info("grub.cfg for the array: %s/grub.cfg on %s (%s, UUID %s)", found,
                     part.node, fstype, uuid)
            return GrubConfig(part.node, uuid, found)
        checked.append(f"{part.node} ({fstype}, no grub.cfg)")
    raise InvalidImage(
        f"no filesystem on {md_device} holds a grub.cfg ({', '.join(p for p, _ in CONFIGS)}); "
        f"checked: {'; '.join(checked) or 'no partitions'}. The image must carry its grub "
        "configuration for BIOS boot from software RAID")


def build_core(config: GrubConfig, workdir: str, grub_dir: str) -> bytes:
    """core.img from the ramdisk's grub: assembles md, finds grub.cfg by UUID."""
    early = os.path.join(workdir, "early.cfg")
    with open(early, "w") as f:
        f.write(f"search --no-floppy --fs-uuid --set=root {config.fs_uuid}\n"
                f"set prefix=($root){config.prefix}\n")
    out = os.path.join(workdir, "core.img")
    tools.run("grub-mkimage", "-O", "i386-pc", "-d", grub_dir, "-o", out, "-c", early,
              "-p", config.prefix, *MODULES, timeout=120.0)
    with open(out, "rb") as f:
        return f.read()


def prepare_member(disk: str, need_sectors: int) -> CoreArea:
    """Where core.img goes on ``disk``: its BIOS boot partition, made if needed, or the gap."""
    room = raid.boot_room(disk)
    table = room.table
    if table.sector_size != SECTOR:
        raise CommandExecutionError(f"the RAID member {disk} has {table.sector_size}-byte "
                                    "sectors; legacy BIOS boots only from 512-byte sectors")
    if table.kind == "mbr":
        if room.sectors < need_sectors:
            raise CommandExecutionError(
                f"the RAID member {disk} has {room.sectors} free sectors before its first "
                f"partition; the boot code needs {need_sectors}")
        return CoreArea(disk, room.first_lba, room.sectors, None)
    existing = [p for p in table.partitions if p.type_guid == pt.BIOS_BOOT_GUID]
    if existing:
        part = existing[0]
        area = CoreArea(disk, part.first_lba, part.last_lba - part.first_lba + 1, part.number)
    else:
        first = room.aligned_start()
        last = min(room.end_lba, first + BIOS_BOOT_SECTORS) - 1
        if last - first + 1 < need_sectors:
            raise CommandExecutionError(
                f"the RAID member {disk} has no room for a BIOS boot partition: "
                f"{room.sectors} free sectors before its first partition, the boot code "
                f"needs {need_sectors}; create the arrays with the RAID step in BIOS mode, "
                "which leaves that room")
        number = raid.free_number(table)
        raid.add_partition(room, number, first, last, BIOS_BOOT_CODE, "bios-boot")
        area = CoreArea(disk, first, last - first + 1, number, created=True)
    if area.sectors < need_sectors:
        raise CommandExecutionError(
            f"the BIOS boot partition {area.partition} on {disk} holds {area.sectors} sectors; "
            f"the boot code needs {need_sectors}")
    return area


def patch_boot(boot_img: bytes, core_lba: int) -> bytes:
    """boot.img's code pointing at core.img, drive-number check off as for hard disks."""
    if len(boot_img) != SECTOR or boot_img[510:] != b"\x55\xaa":
        raise CommandExecutionError("the ramdisk's grub boot.img is not a 512-byte boot sector")
    data = bytearray(boot_img)
    struct.pack_into("<Q", data, KERNEL_SECTOR, core_lba)
    data[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(data[:MBR_CODE_END])


def patch_core(core_img: bytes, core_lba: int) -> bytes:
    """core.img whose first sector loads the other sectors from right after it."""
    sectors = -(-len(core_img) // SECTOR)
    if not 2 <= sectors <= 0xFFFF:
        raise CommandExecutionError(f"core.img of {len(core_img)} bytes cannot be loaded by "
                                    "its first sector")
    data = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    struct.pack_into("<QHH", data, BLOCKLIST, core_lba + 1, sectors - 1, CORE_SEGMENT)
    return bytes(data)


def write_member(area: CoreArea, boot_img: bytes, core_img: bytes) -> None:
    """Write boot code and core.img to one member, then read both back from the medium."""
    boot = patch_boot(boot_img, area.first_lba)
    core = patch_core(core_img, area.first_lba)
    if len(core) > area.sectors * SECTOR:
        raise CommandExecutionError(f"core.img needs {len(core) // SECTOR} sectors; "
                                    f"{area.disk} has {area.sectors} for it")
    core_at = area.first_lba * SECTOR
    fd = os.open(area.disk, os.O_RDWR | os.O_CLOEXEC)
    try:
        tail = os.pread(fd, SECTOR - MBR_CODE_END, MBR_CODE_END)
        _write_all(fd, core, core_at)
        _write_all(fd, boot, 0)
        os.fsync(fd)
        # drop the cached pages so the reads below come from the disk
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if os.pread(fd, SECTOR, 0) != boot + tail or os.pread(fd, len(core), core_at) != core:
            raise CommandExecutionError(f"the boot code read back from {area.disk} differs "
                                        "from what was written")
    finally:
        os.close(fd)
    LOG.info("grub boot code on %s: MBR -> core.img at sector %d (%d sectors, %s)", area.disk,
             area.first_lba, len(core) // SECTOR,
             f"partition {area.partition}" if area.partition else "MBR gap")


def install(md_device: str, members: list[str], root_uuid: str | None, *,
            grub_dir: str | None = None) -> BiosOutcome:
    """Make every member of ``md_device`` boot the image's grub.cfg from the array."""
    grub_dir = check_grub(grub_dir)
    config = find_config(md_device, root_uuid)
    with tempfile.TemporaryDirectory(prefix="deploy-agent-grub-") as workdir:
        core = build_core(config, workdir, grub_dir)
    with open(os.path.join(grub_dir, "boot.img"), "rb") as f:
        boot = f.read()
    need = -(-len(core) // SECTOR)
    # every member is checked before any is written: all or none get boot code
    areas = [prepare_member(disk, need) for disk in members]
    for area in areas:
        write_member(area, boot, core)
    return BiosOutcome(config, len(core), areas)


def _probe(node: str) -> tuple[str | None, str | None]:
    proc = tools.run("blkid", "-p", "-o", "export", node, check=False, timeout=60.0)
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return values.get("TYPE"), values.get("UUID")


def _grub_cfg(node: str, fstype: str) -> str | None:
    """The grub prefix whose grub.cfg this filesystem has, from a read-only mount."""
    # no journal replay either: the filesystem stays byte for byte as the image left it
    options = ("ro", *NO_REPLAY.get(fstype, ()))
    with mounts.mounted(node, fstype=fstype, options=options,
                        what="filesystem with the grub config") as tree:
        for path, prefix in CONFIGS:
            full = os.path.join(tree, path)
            if os.path.isfile(full) and not os.path.islink(full):
                return prefix
    return None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
