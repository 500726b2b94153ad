"""Making a written disk bootable: UEFI NVRAM entries, opt-in BIOS grub, ppc64le PReP.

``install_bootloader`` (in ``install``) is the entry point; the modules below
it each do one thing: ``devices`` finds partitions, ``mounts`` mounts and
always unmounts, ``loaders`` reads an ESP tree, ``efibootmgr`` writes NVRAM,
``uefi`` composes those, ``chroot`` prepares the image's root for its own
programs, ``devicemap`` names the install disk for grub while it runs, and
``grub_bios`` / ``prep`` run the image's grub (opt-in only).  For an md install
disk, ``raid`` finds the member disks and ``raid_bios`` (ramdisk-built grub on
every member) or ``raid_uefi`` (mirrored ESP on every member, NVRAM entry per
member) makes each of them bootable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.imaging.bootloader.install import (
        CVE_MESSAGE,
        Outcome,
        Request,
        install_bootloader,
    )

__all__ = ["CVE_MESSAGE", "Outcome", "Request", "install_bootloader"]


def __getattr__(name: str) -> Any:
    # loaded on first use: listing the clean_uefi_nvram step imports this package,
    # and an agent that never installs a bootloader need not hold the installer
    if name in __all__:
        from agent.imaging.bootloader import install
        return getattr(install, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
