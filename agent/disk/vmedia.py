"""Which block devices are the virtual media Ironic attached, from their bytes alone.

Ironic's ``redfish-virtual-media`` boot hands the ramdisk two kinds of media:
a small vfat image labelled ``ir-vfd-dev`` holding ``parameters.txt`` (when
``config_via_removable`` is set), and the ISO the ramdisk booted from
(labelled ``config-2`` when it carries ``openstack/`` network data, else
``VMEDIA_BOOT_ISO``).  Neither may ever be erased or chosen as the install
disk, and the agent reads its boot configuration from both.

There is no udev in the ramdisk to make ``/dev/disk/by-label`` links and no
guarantee of a vfat or iso9660 driver, so the labels are read straight from
the superblocks: the FAT boot sector and the ISO primary volume descriptor.
"""

from __future__ import annotations

import dataclasses
import os

from agent.disk import sysfs

VFD_LABEL = "ir-vfd-dev"
ISO_LABELS = ("config-2", "VMEDIA_BOOT_ISO")

_ISO_PVD = 16 * 2048            # the primary volume descriptor sits in sector 16
_PROBE_BYTES = _ISO_PVD + 2048


@dataclasses.dataclass(frozen=True)
class Medium:
    """One virtual-media device: ``kind`` is ``vfd`` (the parameters image) or ``iso``."""

    device: str
    kind: str
    label: str | None


def probe(device: str) -> tuple[str | None, str | None]:
    """(``vfat`` | ``iso9660`` | None, label) of the filesystem at the start of ``device``.

    Unreadable devices (no medium, gone, permission) probe as nothing: the
    callers treat them as ordinary disks, which is what they would be.
    """
    try:
        # O_NONBLOCK: an empty removable drive answers at once instead of waiting for media
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None, None
    try:
        buf = os.pread(fd, _PROBE_BYTES, 0)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    if buf[_ISO_PVD:_ISO_PVD + 6] == b"\x01CD001":
        return "iso9660", _text(buf[_ISO_PVD + 40:_ISO_PVD + 72])
    if len(buf) >= 512 and buf[510:512] == b"\x55\xaa":
        # FAT32 keeps its extended boot record further in than FAT12/16
        if buf[82:87] == b"FAT32":
            return "vfat", _text(buf[71:82])
        if buf[54:59] in (b"FAT12", b"FAT16"):
            return "vfat", _text(buf[43:54])
    return None, None


def _text(raw: bytes) -> str | None:
    text = raw.split(b"\0")[0].decode("ascii", "replace").strip()
    return None if not text or text == "NO NAME" else text


def classify(device: str, *, read_only: bool, kname: str | None = None) -> Medium | None:
    """The Medium ``device`` is, or None for an ordinary disk.

    An ISO counts only on a read-only or optical (``sr*``) device: an ISO
    image deployed onto a writable disk is the node's data, and erasable.
    The ``ir-vfd-dev`` label counts anywhere: Ironic is its only author.
    """
    fstype, label = probe(device)
    name = kname or os.path.basename(device)
    if fstype == "vfat" and label is not None and label.lower() == VFD_LABEL:
        return Medium(device, "vfd", label)
    if fstype == "iso9660" and (read_only or name.startswith("sr")):
        return Medium(device, "iso", label)
    return None


def reason(medium: Medium) -> str:
    """Why a disk is left alone, for skip lists and logs."""
    if medium.kind == "vfd":
        return f"virtual media: the {VFD_LABEL} configuration image"
    return f"virtual media: the ISO the ramdisk booted from (label {medium.label or 'none'})"


def scan(root: str = "/", dev_dir: str = "/dev") -> list[Medium]:
    """Every virtual-media device, vfd images first, each kind in natural name order."""
    found = []
    for kname in sysfs.listdir(sysfs.path(root, "/sys/block")):
        sys_dir = sysfs.path(root, "/sys/block", kname)
        if not sysfs.read_int(os.path.join(sys_dir, "size")):
            continue        # no medium, or an unbound loop device
        read_only = sysfs.read_int(os.path.join(sys_dir, "ro")) == 1
        medium = classify(os.path.join(dev_dir, kname), read_only=read_only, kname=kname)
        if medium is not None:
            found.append(medium)
    # the ISO Ironic built sorts ahead of any other read-only ISO (stable: names stay sorted)
    found.sort(key=lambda m: (m.kind != "vfd", m.label not in ISO_LABELS))
    return found
