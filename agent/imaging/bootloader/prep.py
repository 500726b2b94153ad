"""ppc64le: grub for powerpc-ieee1275 in the PReP partition, and the config petitboot reads.

PowerVM/SLOF firmware boots the ELF image grub-install writes into the 8 MiB
PReP partition.  OpenPOWER's petitboot ignores it and parses grub.cfg from the
root filesystem itself, so that file must exist whatever else happens.  Like
the BIOS path this runs the image's own grub (opt-in, checked by the caller).
"""

from __future__ import annotations

import dataclasses
import logging
import os

from agent.disk import partition_table as pt
from agent.errors import DeviceNotFound, InvalidImage
from agent.imaging.bootloader import chroot, devicemap, devices, grub_bios

LOG = logging.getLogger(__name__)

TARGET = "powerpc-ieee1275"
# what petitboot's grub parser reads from a root filesystem
CONFIG_PATHS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
ELF_MAGIC = b"\x7fELF"
CHUNK = 1024 * 1024


@dataclasses.dataclass
class PrepOutcome:
    prep: str | None          # PReP device node, None when there is none (petitboot only)
    config: str               # in-image path of the grub.cfg that was found


def find_prep(view: devices.DiskView, prep_uuid: str | None) -> devices.DiskPartition | None:
    """The PReP partition by its recorded UUID, else by type; None when the disk has none."""
    if prep_uuid:
        part = view.by_uuid(prep_uuid)
        if part is None:
            raise DeviceNotFound(f"No PReP Boot partition with UUID {prep_uuid} on "
                                 f"{view.disk}; partitions: {view.describe()}")
        if part not in view.by_type(pt.PREP_GUID, pt.MBR_PREP):
            raise InvalidImage(f"{part.node} (UUID {prep_uuid}) is not a PReP Boot partition "
                               f"(type {part.partition.type_guid or part.partition.mbr_type}); "
                               "refusing to write boot code into it")
        return part
    typed = view.by_type(pt.PREP_GUID, pt.MBR_PREP)
    return typed[0] if typed else None


def clear_if_foreign(node: str) -> bool:
    """Zero the partition unless it is blank or holds an ELF boot image; True if zeroed.

    grub-install refuses any other PReP content, and leftovers from an earlier
    tenant are the usual cause on a re-deployed disk.
    """
    fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        head = os.pread(fd, len(ELF_MAGIC), 0)
        if head == ELF_MAGIC:
            return False
        offset = 0
        while offset < size:
            block = os.pread(fd, min(CHUNK, size - offset), offset)
            if block.count(0) != len(block):
                break
            offset += len(block)
        else:
            return False
        zeros = bytes(CHUNK)
        for start in range(0, size, CHUNK):
            os.pwrite(fd, zeros[:min(CHUNK, size - start)], start)
        os.fsync(fd)
    finally:
        os.close(fd)
    LOG.info("cleared foreign data from the PReP partition %s", node)
    return True


def install(view: devices.DiskView, root_device: str,
            prep_uuid: str | None = None) -> PrepOutcome:
    prep = find_prep(view, prep_uuid)
    with chroot.image_root(root_device) as root:
        grub = grub_bios.image_grub(root)
        grub_bios.require(grub, install=prep is not None, mkconfig=False)
        if prep is not None:
            assert grub.install is not None
            clear_if_foreign(prep.node)
            # --no-nvram: the conductor owns the boot device, and OPAL has no
            # Open Firmware NVRAM for grub-install to write
            with devicemap.install_disk_map(root, grub.directory, view.disk):
                chroot.run(root, grub.install, f"--target={TARGET}", "--no-nvram", prep.node)
        else:
            LOG.info("no PReP partition on %s: petitboot boots from the grub config alone",
                     view.disk)
        if grub.mkconfig:
            grub_bios.make_config(root, grub)
        found = [p for p in CONFIG_PATHS if chroot.exists(root, p)]
        if not found:
            raise InvalidImage(
                f"the root filesystem on {root_device} has no {' or '.join(CONFIG_PATHS)}"
                + (f" even after {grub.mkconfig} ran" if grub.mkconfig else
                   " and the image has no grub-mkconfig to create one")
                + "; petitboot reads that file to boot the node")
    LOG.info("ppc64le boot: grub %s, config %s",
             f"installed in {prep.node}" if prep else "not needed (no PReP)", found[0])
    return PrepOutcome(prep.node if prep else None, found[0])
