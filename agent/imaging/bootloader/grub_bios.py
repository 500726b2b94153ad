"""Opt-in legacy BIOS boot: the image's own grub, installed from a chroot.

This runs the tenant's grub-install and grub-mkconfig as root, which is why it
is reachable only with ``enable_bios_bootloader_install`` (CVE-2026-43003);
the caller checks that.  grub2-* (Red Hat, SUSE) is preferred over grub-*
(Debian, Ubuntu) so each distribution's config lands where its grub reads it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath

from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import chroot, devicemap

LOG = logging.getLogger(__name__)

# uname -m -> grub platform for legacy BIOS
BIOS_TARGETS = {"x86_64": "i386-pc", "amd64": "i386-pc", "i686": "i386-pc", "i386": "i386-pc"}


@dataclasses.dataclass(frozen=True)
class ImageGrub:
    install: str | None      # in-image paths; None when the image lacks the program
    mkconfig: str | None
    config: str              # where this grub flavour keeps grub.cfg

    @property
    def directory(self) -> str:
        """In-image directory this flavour's grub-install fills (and reads device.map from)."""
        return posixpath.dirname(self.config)


def image_grub(root: str) -> ImageGrub:
    """The image's grub programs, grub2-* first."""
    for flavour in ("grub2", "grub"):
        install = chroot.find_program(root, [f"{flavour}-install"])
        mkconfig = chroot.find_program(root, [f"{flavour}-mkconfig"])
        if install or mkconfig:
            return ImageGrub(install, mkconfig, f"/boot/{flavour}/grub.cfg")
    return ImageGrub(None, None, "/boot/grub/grub.cfg")


def require(grub: ImageGrub, *, install: bool, mkconfig: bool) -> None:
    missing = [name for name, wanted, have in (("grub-install", install, grub.install),
                                                ("grub-mkconfig", mkconfig, grub.mkconfig))
               if wanted and not have]
    if missing:
        raise InvalidImage(
            f"the image has no {' or '.join(missing)} (looked for grub2-* and grub-* in "
            f"/{', /'.join(chroot.PROGRAM_DIRS)}); its boot loader cannot be installed")


def make_config(root: str, grub: ImageGrub) -> str:
    """Regenerate grub.cfg with the image's grub-mkconfig, OS prober off; return its path."""
    assert grub.mkconfig is not None
    os.makedirs(chroot.resolve(root, os.path.dirname(grub.config)), exist_ok=True)
    chroot.run(root, grub.mkconfig, "-o", grub.config)
    return grub.config


def install(disk: str, root_device: str, *, arch: str) -> ImageGrub:
    """grub-install into the disk's boot sector (and gap or BIOS boot partition), then grub.cfg."""
    target = BIOS_TARGETS.get(arch.lower())
    if target is None:
        raise CommandExecutionError(f"legacy BIOS boot does not exist on {arch}; deploy this "
                                    "node in UEFI mode")
    with chroot.image_root(root_device) as root:
        grub = image_grub(root)
        require(grub, install=True, mkconfig=True)
        assert grub.install is not None
        with devicemap.install_disk_map(root, grub.directory, disk):
            chroot.run(root, grub.install, f"--target={target}", disk)
        make_config(root, grub)
        if not chroot.exists(root, grub.config):
            raise InvalidImage(f"the image's {grub.mkconfig} succeeded but wrote no "
                               f"{grub.config}; the node would stop at a grub prompt")
    LOG.info("installed the image's grub (%s) on %s, config %s", target, disk, grub.config)
    return grub
