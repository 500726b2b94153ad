"""GRUB for a disk *image file*, without grub-install (which wants a real block device).

BIOS: ``boot.img`` goes into the MBR's code area and ``core.img`` into the
BIOS boot partition; then the two pointers grub-bios-setup would patch are
patched here: the sector boot.img loads (core.img's first sector) and the
blocklist in that first sector (the rest of core.img).  UEFI: one
``grub-mkimage -O x86_64-efi`` binary for the ESP.  Both images embed every
module they need plus a small config that finds the root filesystem by UUID,
so nothing but ``grub.cfg`` has to live on the disk.
"""

from __future__ import annotations

import os
import struct
import subprocess

GRUB_LIB = "/usr/lib/grub"
SECTOR = 512
# offsets inside boot.img (grub-core/boot/i386/pc/boot.S)
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
MBR_CODE_END = 0x1B8            # disk signature and partition table follow: keep them
# core.img's first sector ends with one blocklist entry: u64 start, u16 len, u16 segment
BLOCKLIST_OFFSET = SECTOR - 12
KERNEL_SEGMENT = 0x800 + (SECTOR >> 4)

# md arrays, as a distribution's grub reads them: the image's UEFI GRUB, copied to
# every member's ESP when the image is deployed onto a software RAID, must find
# its root filesystem inside the array, degraded or not
MD_MODULES = ["diskfilter", "mdraid09", "mdraid1x", "raid5rec", "raid6rec"]
MODULES = {
    "i386-pc": ["biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid",
                "normal", "configfile", "linux", "boot", "echo", "test", "serial",
                "terminal", "sleep", *MD_MODULES],
    "x86_64-efi": ["part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid",
                   "normal", "configfile", "linux", "boot", "echo", "test", "serial",
                   "terminal", "sleep", "efinet", *MD_MODULES],
}


class GrubError(Exception):
    pass


def platform_dir(platform: str) -> str:
    path = os.path.join(GRUB_LIB, platform)
    if not os.path.isfile(os.path.join(path, "moddep.lst")):
        package = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}[platform]
        raise GrubError(f"GRUB modules for {platform} are missing ({path}); "
                        f"apt-get install {package}")
    return path


def early_config(root_fs_uuid: str) -> str:
    """The embedded config: find the root filesystem, then normal mode reads its grub.cfg."""
    return (f"search --no-floppy --fs-uuid --set=root {root_fs_uuid}\n"
            "set prefix=($root)/boot/grub\n")


def mkimage(platform: str, output: str, early_cfg_path: str) -> None:
    fmt = {"i386-pc": "i386-pc", "x86_64-efi": "x86_64-efi"}[platform]
    argv = ["grub-mkimage", "-O", fmt, "-d", platform_dir(platform), "-o", output,
            "-c", early_cfg_path, "-p", "/boot/grub", *MODULES[platform]]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise GrubError(f"grub-mkimage -O {fmt} failed: {result.stderr.strip()}")


def patch_boot_img(boot_img: bytes, core_lba: int) -> bytes:
    """boot.img, told where core.img starts, with the drive-number check disabled.

    The check is skipped as grub-bios-setup does for hard disks, because
    some BIOSes pass a wrong boot drive number.
    """
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise GrubError("boot.img is not a 512-byte boot sector")
    data = bytearray(boot_img)
    data[KERNEL_SECTOR_OFFSET:KERNEL_SECTOR_OFFSET + 8] = struct.pack("<Q", core_lba)
    data[DRIVE_CHECK_OFFSET:DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    return bytes(data)


def patch_core_img(core_img: bytes, core_lba: int) -> bytes:
    """core.img whose first sector loads the remaining sectors from right after it."""
    sectors = -(-len(core_img) // SECTOR)
    if sectors < 2 or sectors - 1 > 0xFFFF:
        raise GrubError(f"core.img of {len(core_img)} bytes cannot be blocklisted")
    data = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    data[BLOCKLIST_OFFSET:SECTOR] = struct.pack("<QHH", core_lba + 1, sectors - 1,
                                                KERNEL_SEGMENT)
    return bytes(data)


def install_bios(disk_path: str, core_path: str, core_lba: int, room_sectors: int) -> None:
    """Write boot.img's code into the image's MBR and core.img at ``core_lba``."""
    with open(os.path.join(platform_dir("i386-pc"), "boot.img"), "rb") as f:
        boot = patch_boot_img(f.read(), core_lba)
    with open(core_path, "rb") as f:
        core = patch_core_img(f.read(), core_lba)
    if len(core) > room_sectors * SECTOR:
        raise GrubError(f"core.img needs {len(core)} bytes; the BIOS boot partition holds "
                        f"{room_sectors * SECTOR}")
    with open(disk_path, "r+b") as disk:
        disk.seek(0)
        disk.write(boot[:MBR_CODE_END])
        disk.seek(core_lba * SECTOR)
        disk.write(core)
