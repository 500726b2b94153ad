"""UEFI: register the image's own loaders in NVRAM.

Find the ESP on the install disk, read which loaders it offers (mounted
read-only, and unmounted again before NVRAM is touched), then create the boot
entries.  Nothing is copied onto the ESP and nothing from the image runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

from agent import tools
from agent.disk import mounts
from agent.disk import partition_table as pt
from agent.errors import DeviceNotFound
from agent.imaging.bootloader import devices, efibootmgr, loaders

LOG = logging.getLogger(__name__)

EFI_SYSFS = "/sys/firmware/efi"

EspOpener = Callable[[str], contextlib.AbstractContextManager[str]]


@dataclasses.dataclass
class UefiOutcome:
    esp: str                               # ESP device node
    partition: int
    loaders: list[loaders.Loader]
    entries: list[efibootmgr.BootEntry]
    fallback_missing: str | None           # the removable-media path when it is absent
    problems: list[str]


def efi_booted() -> bool:
    """The ramdisk itself runs under UEFI, so NVRAM entries can be written."""
    return os.path.isdir(EFI_SYSFS)


def nvram_available() -> bool:
    return efi_booted() and tools.which("efibootmgr") is not None


@contextlib.contextmanager
def mount_esp(device: str) -> Iterator[str]:
    """The production opener: a read-only vfat mount on a temporary directory."""
    with mounts.mounted(device, fstype="vfat", options=("ro",),
                        what="EFI system partition") as path:
        yield path


def find_esp(view: devices.DiskView, efi_system_part_uuid: str | None
             ) -> devices.DiskPartition:
    """The ESP by partition type; the recorded UUID picks among several or finds an untyped one."""
    typed = view.by_type(pt.ESP_GUID, pt.MBR_ESP)
    by_uuid = view.by_uuid(efi_system_part_uuid) if efi_system_part_uuid else None
    if by_uuid is not None and (by_uuid in typed or not typed):
        return by_uuid
    if typed:
        if efi_system_part_uuid:
            LOG.warning("no ESP with UUID %s on %s; using the first ESP by type, %s",
                        efi_system_part_uuid, view.disk, typed[0].node)
        return typed[0]
    raise DeviceNotFound(
        f"No EFI partition could be detected on device {view.disk}"
        + (f" (no partition has the ESP type, nor UUID {efi_system_part_uuid})"
           if efi_system_part_uuid else " and no EFI system partition UUID was recorded")
        + ". Are you using a UEFI-compatible image?")


def setup(disk: str, efi_system_part_uuid: str | None = None, *, arch: str,
          open_esp: EspOpener | None = None) -> UefiOutcome | None:
    """Register the ESP's loaders; None when the ESP offers none (try the GRUB path).

    ``open_esp`` turns the ESP device into a directory tree for the duration of
    the scan; the default is ``mount_esp``, looked up at call time.
    """
    loaders.suffix_for(arch)   # an unsupported architecture fails before anything is mounted
    view = devices.DiskView(disk)
    esp = find_esp(view, efi_system_part_uuid)
    LOG.info("EFI system partition of %s: %s (partition %d)", disk, esp.node, esp.number)
    with (open_esp or mount_esp)(esp.node) as tree:
        scan = loaders.scan(tree, arch)
    if not scan.loaders:
        LOG.warning("the EFI system partition %s holds no boot loader for %s%s", esp.node, arch,
                    f" ({'; '.join(scan.problems)})" if scan.problems else "")
        return None
    if scan.fallback is None:
        LOG.warning("the removable-media fallback %s is missing on %s: the node boots only "
                    "through the NVRAM entries created now, not after an NVRAM reset",
                    scan.expected_fallback, esp.node)
    entries = efibootmgr.register(disk, esp.number, scan.loaders)
    return UefiOutcome(esp=esp.node, partition=esp.number, loaders=scan.loaders,
                       entries=entries,
                       fallback_missing=None if scan.fallback else scan.expected_fallback,
                       problems=scan.problems)
