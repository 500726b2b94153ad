"""A temporary grub ``device.map`` naming the install disk, for the image's grub-install.

grub-install names each disk it works with as a BIOS drive.  A device.map
fixes the install disk as ``(hd0)``, the drive the firmware boots from, so the
name does not depend on what grub finds when it probes the machine itself.
It does not replace grub's other probing: on disks that report no geometry
(loop devices, for one) grub still runs the image's ``udevadm`` to learn where
a partition starts, and fails with "cannot find a GRUB drive" without it.

The file is the agent's, not the image's: it is removed again whatever
grub-install did, and an image that ships its own device.map keeps it as is.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
from collections.abc import Iterator

from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import chroot

LOG = logging.getLogger(__name__)

NAME = "device.map"


def entry(root: str, disk: str) -> str:
    """The device.map line for ``disk`` as the chroot sees it (symlinks resolved there)."""
    seen = "/" + os.path.relpath(chroot.resolve(root, disk), root)
    return f"(hd0)\t{seen}\n"


@contextlib.contextmanager
def install_disk_map(root: str, grub_dir: str, disk: str) -> Iterator[str | None]:
    """Give the image's grub ``grub_dir``/device.map with ``disk`` as (hd0) while inside.

    ``grub_dir`` is the in-image directory the image's grub-install reads
    (``/boot/grub`` or ``/boot/grub2``).  Yields the in-image path of the file
    written, or None when the image has its own and it was left alone.
    """
    image_path = posixpath.join(grub_dir, NAME)
    # the name itself is not followed: an image's symlink there is the image's own map
    host = os.path.join(chroot.resolve(root, grub_dir), NAME)
    if os.path.lexists(host):
        LOG.info("the image has its own %s; grub-install will use it", image_path)
        yield None
        return
    for name in chroot.BIND_DIRS:
        if host.startswith(os.path.join(root, name) + "/"):
            raise InvalidImage(f"the image's {grub_dir} leads into /{name}, which is the "
                               "ramdisk's; refusing to write grub's device.map there")
    line = entry(root, disk)
    made: list[str] = []
    created = False
    try:
        _make_dirs(os.path.dirname(host), made)
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        created = True
        with os.fdopen(fd, "w") as f:
            f.write(line)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _remove(host if created else None, made)
        raise CommandExecutionError(f"could not write {image_path} into the image for "
                                    f"grub-install: {exc.strerror}") from exc
    LOG.info("wrote %s for the image's grub: %s", image_path, line.strip())
    try:
        yield image_path
    except BaseException as exc:
        try:
            _remove(host, made)
        except OSError as cleanup:
            LOG.error("cleanup after a failure: could not remove %s: %s", image_path, cleanup)
            exc.add_note(f"cleanup: could not remove the agent's {image_path}: {cleanup}")
        raise
    try:
        _remove(host, made)
    except OSError as exc:
        raise CommandExecutionError(f"could not remove the agent's {image_path} from the "
                                    f"image after grub-install: {exc.strerror}") from exc


def _make_dirs(path: str, made: list[str]) -> None:
    """Create ``path`` and its missing parents, recording each in ``made``, deepest first."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        made.insert(0, directory)


def _remove(host: str | None, made: list[str]) -> None:
    if host is not None:
        try:
            os.unlink(host)
        except FileNotFoundError:
            pass   # grub (or the image's own script) removed it already
    for directory in made:
        try:
            os.rmdir(directory)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # grub-install put its files there: they belong to the installed loader now
            break
