"""Whole-disk listing from /sys/block, in the inventory's ``disks[]`` schema.

Identity fields come from the udev database (``/run/udev/data``) when udev
runs, and are derived from sysfs otherwise (serial from the transport's own
attribute or SCSI VPD page 0x80, WWN from ``wwid``, ``by_path`` computed the
way udev's path_id names it), so hint matching works in a ramdisk without
udev too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

from agent.disk import sysfs
from agent.hardware.raid import arrays as md_arrays

LOG = logging.getLogger(__name__)

GIB = 1024 ** 3
_PCI = re.compile(r"/([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])(?=/)")
_HCTL = re.compile(r"^\d+:\d+:\d+:\d+$")
_EXCLUDED_PREFIXES = ("ram", "zram", "fd", "sr", "nbd", "mtdblock")

INVENTORY_FIELDS = ("name", "model", "vendor", "serial", "wwn", "wwn_with_extension",
                    "wwn_vendor_extension", "size", "rotational", "hctl", "by_path",
                    "logical_sectors", "physical_sectors", "tran")


@dataclasses.dataclass
class Partition:
    name: str                     # /dev/sda1
    devno: tuple[int, int]
    start: int                    # bytes from the start of the disk
    size: int                     # bytes


@dataclasses.dataclass
class Disk:
    name: str
    size: int
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    wwn: str | None = None
    wwn_with_extension: str | None = None
    wwn_vendor_extension: str | None = None
    rotational: bool = False
    hctl: str | None = None
    by_path: str | None = None
    logical_sectors: int = 512
    physical_sectors: int = 512
    tran: str | None = None
    # not reported, used by hints, guards and erasure
    kname: str = ""
    devno: tuple[int, int] = (0, 0)
    kind: str = "disk"            # disk | loop | md | mpath
    read_only: bool = False
    serials: tuple[str, ...] = ()
    wwns: tuple[str, ...] = ()
    sysfs_path: str = ""
    # md arrays only: the volume name given at creation and the /dev/md/NAME links
    volume_name: str | None = None
    aliases: tuple[str, ...] = ()
    member_disks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The inventory's disk object: exactly the reference's keys."""
        return {key: getattr(self, key) for key in INVENTORY_FIELDS}

    def hint_values(self, key: str) -> list[Any]:
        """Every value a root-device hint ``key`` may match on this disk."""
        if key == "serial":
            values = [self.serial, *self.serials]
        elif key == "name":
            # an array answers to /dev/md127 and to /dev/md/NAME alike
            values = [self.name, *self.aliases]
        elif key in ("wwn", "wwn_with_extension"):
            # any identifier the disk is known by: short and extended WWNs
            values = [getattr(self, key), *self.wwns]
        else:
            return [getattr(self, key, None)]
        return list(dict.fromkeys(v for v in values if v)) or [None]

    @property
    def size_gib(self) -> float:
        return self.size / GIB


def _udev_data(root: str, devno: tuple[int, int]) -> tuple[dict[str, str], list[str]]:
    """Properties (E:) and symlinks (S:) udev recorded for a block device."""
    text = sysfs.read_str(sysfs.path(root, f"/run/udev/data/b{devno[0]}:{devno[1]}"))
    props: dict[str, str] = {}
    links: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            props[key] = value
        elif line.startswith("S:"):
            links.append(line[2:])
    return props, links


def _devno(sys_dir: str) -> tuple[int, int] | None:
    text = sysfs.read_str(os.path.join(sys_dir, "dev"))
    if not text or ":" not in text:
        return None
    major, minor = text.split(":", 1)
    return int(major), int(minor)


def _vpd_serial(sys_dir: str) -> str | None:
    data = sysfs.read_bytes(os.path.join(sys_dir, "device", "vpd_pg80"))
    if not data or len(data) < 4 or data[1] != 0x80:
        return None
    length = int.from_bytes(data[2:4], "big")
    text = data[4:4 + length].decode("ascii", "replace").strip(" \0")
    return text or None


def _serials(sys_dir: str, udev: dict[str, str]) -> list[str]:
    found: list[str] = []
    candidates = [udev.get("ID_SERIAL_SHORT"), udev.get("ID_SERIAL"), udev.get("ID_SCSI_SERIAL"),
                  sysfs.read_str(os.path.join(sys_dir, "device", "serial")),  # nvme, mmc
                  sysfs.read_str(os.path.join(sys_dir, "serial")),            # virtio
                  _vpd_serial(sys_dir)]
    for value in candidates:
        if value and value not in found:
            found.append(value)
    return found


def parse_wwid(wwid: str | None) -> tuple[str | None, str | None, str | None]:
    """(wwn, wwn_with_extension, wwn_vendor_extension) from a sysfs ``wwid``.

    ``naa.`` designators split like udev's ID_WWN: the first 16 hex digits
    are the WWN, the rest (NAA 6 registered extended) the vendor extension.
    NVMe ``eui.``/``nvme.``/``uuid.`` identifiers are reported whole.
    """
    if not wwid:
        return None, None, None
    wwid = wwid.strip()
    kind, _, value = wwid.partition(".")
    kind = kind.lower()
    if kind == "naa" and value:
        hexval = value.lower()
        wwn = "0x" + hexval[:16]
        ext = "0x" + hexval[16:] if len(hexval) > 16 else None
        return wwn, "0x" + hexval, ext
    if kind in ("eui", "nvme", "uuid") and value:
        return wwid, wwid, None
    return None, None, None


def _tran(full: str, kname: str) -> str | None:
    # same path-based classification lsblk uses for its TRAN column
    if kname.startswith("nvme") or "/nvme" in full:
        return "nvme"
    for marker, tran in (("/usb", "usb"), ("/ata", "sata"), ("/end_device-", "sas"),
                         ("/rport-", "fc"), ("/session", "iscsi"), ("/mmc_host/", "mmc")):
        if marker in full:
            return tran
    return None


def _host_offset(full: str) -> int:
    """udev numbers SCSI hosts relative to the first host on the same parent."""
    match = re.search(r"/host(\d+)/", full)
    if not match:
        return 0
    parent = full[:match.start()]
    numbers = [int(n[4:]) for n in sysfs.listdir(parent) if re.fullmatch(r"host\d+", n)]
    return int(match.group(1)) - min(numbers) if numbers else 0


def compute_by_path(root: str, full: str, kname: str, hctl: str | None) -> str | None:
    """The name udev's path_id gives this disk, or None when not derivable."""
    pcis = _PCI.findall(full + "/")
    if not pcis:
        return None
    pci = pcis[-1]
    if kname.startswith("nvme"):
        nsid = sysfs.read_int(os.path.join(full, "nsid"))
        match = re.search(r"n(\d+)$", kname)
        nsid = nsid or (int(match.group(1)) if match else None)
        return f"pci-{pci}-nvme-{nsid}" if nsid else None
    ata = re.search(r"/ata(\d+)/", full)
    if ata:
        port = sysfs.read_int(sysfs.path(root, f"/sys/class/ata_port/ata{ata.group(1)}/port_no"))
        return f"pci-{pci}-ata-{port or ata.group(1)}"
    if "/end_device-" in full and hctl:
        sas = sysfs.read_str(os.path.join(full, "device", "sas_address"))
        if sas:
            return f"pci-{pci}-sas-{sas}-lun-{hctl.rsplit(':', 1)[1]}"
    if hctl:
        _, channel, target, lun = hctl.split(":")
        return f"pci-{pci}-scsi-{_host_offset(full)}:{channel}:{target}:{lun}"
    if "/virtio" in full:
        return f"virtio-pci-{pci}"
    return None


def _by_path_links(root: str) -> dict[str, str]:
    """Existing /dev/disk/by-path links (when udev made them), target → link."""
    directory = sysfs.path(root, "/dev/disk/by-path")
    links: dict[str, str] = {}
    for entry in sysfs.listdir(directory):
        target = os.path.basename(os.path.realpath(os.path.join(directory, entry)))
        links.setdefault(target, "/dev/disk/by-path/" + entry)
    return links


def _kind(root: str, kname: str, include_loop: bool) -> str | None:
    sys_dir = sysfs.path(root, "/sys/block", kname)
    if kname.startswith("loop"):
        return "loop" if include_loop else None
    if kname.startswith(_EXCLUDED_PREFIXES):
        return None
    if kname.startswith("dm-"):
        uuid = sysfs.read_str(os.path.join(sys_dir, "dm", "uuid")) or ""
        return "mpath" if uuid.startswith("mpath-") else None
    if os.path.isdir(os.path.join(sys_dir, "md")):
        return "md"
    if sysfs.read_int(os.path.join(sys_dir, "device", "type")) == 5:  # SCSI ROM
        return None
    return "disk"


def _hidden_members(root: str, names: list[str]) -> set[str]:
    """Members of md arrays and multipath maps: reported through their parent."""
    hidden = set()
    for kname in names:
        holders = sysfs.listdir(sysfs.path(root, "/sys/block", kname, "holders"))
        for holder in holders:
            if holder.startswith("md") or _kind(root, holder, False) == "mpath":
                hidden.add(kname)
    return hidden


def read_disk(root: str, kname: str, kind: str, links: dict[str, str]) -> Disk | None:
    sys_dir = sysfs.path(root, "/sys/block", kname)
    devno = _devno(sys_dir)
    sectors = sysfs.read_int(os.path.join(sys_dir, "size")) or 0
    if devno is None or sectors == 0:
        return None
    udev, udev_links = _udev_data(root, devno)
    full = sysfs.realpath(sys_dir) or sys_dir
    device = sysfs.realpath(os.path.join(sys_dir, "device"))
    hctl = os.path.basename(device) if device and _HCTL.match(os.path.basename(device)) else None
    serials = _serials(sys_dir, udev) if kind != "loop" else []
    wwn, wwn_ext, vendor_ext = parse_wwid(
        sysfs.read_str(os.path.join(sys_dir, "device", "wwid"))
        or sysfs.read_str(os.path.join(sys_dir, "wwid")))
    wwn = udev.get("ID_WWN") or wwn
    wwn_ext = udev.get("ID_WWN_WITH_EXTENSION") or wwn_ext
    vendor_ext = udev.get("ID_WWN_VENDOR_EXTENSION") or vendor_ext
    by_path = next((f"/dev/{s}" for s in udev_links if s.startswith("disk/by-path/")), None)
    if by_path is None and kind != "loop":
        by_path = links.get(kname)
        if by_path is None:
            computed = compute_by_path(root, full, kname, hctl)
            by_path = f"/dev/disk/by-path/{computed}" if computed else None
    queue = os.path.join(sys_dir, "queue")
    return Disk(
        name=f"/dev/{kname}", size=sectors * 512,
        model=sysfs.read_str(os.path.join(sys_dir, "device", "model")) or udev.get("ID_MODEL"),
        vendor=sysfs.read_str(os.path.join(sys_dir, "device", "vendor")) or udev.get("ID_VENDOR"),
        serial=serials[0] if serials else None,
        wwn=wwn, wwn_with_extension=wwn_ext, wwn_vendor_extension=vendor_ext,
        rotational=sysfs.read_int(os.path.join(queue, "rotational")) == 1,
        hctl=hctl, by_path=by_path,
        logical_sectors=sysfs.read_int(os.path.join(queue, "logical_block_size")) or 512,
        physical_sectors=sysfs.read_int(os.path.join(queue, "physical_block_size")) or 512,
        tran=_tran(full, kname) if kind == "disk" else None,
        kname=kname, devno=devno, kind=kind,
        read_only=sysfs.read_int(os.path.join(sys_dir, "ro")) == 1,
        serials=tuple(serials),
        wwns=tuple(w for w in (wwn, wwn_ext, udev.get("ID_WWN")) if w),
        sysfs_path=sys_dir,
    )


def _with_array(disk: Disk, found: dict[str, md_arrays.MdArray]) -> Disk:
    array = found.get(disk.kname)
    if array is not None:
        disk.volume_name = array.volume_name
        disk.aliases = array.links
        disk.member_disks = array.member_disks
    return disk


def list_disks(root: str = "/", include_loop: bool = False) -> list[Disk]:
    """Whole disks, md arrays and multipath maps in natural name order.

    md arrays are listed (they are deploy targets) with their volume name; a
    whole disk that is itself an array member is reported through its array.
    """
    names = [n for n in sysfs.listdir(sysfs.path(root, "/sys/block"))]
    hidden = _hidden_members(root, names)
    links = _by_path_links(root)
    found = ({a.kname: a for a in md_arrays.list_arrays(root)}
             if any(n.startswith("md") for n in names) else {})
    disks = []
    for kname in names:
        if kname in hidden:
            continue
        if sysfs.read_int(sysfs.path(root, "/sys/block", kname, "hidden")) == 1:
            continue  # NVMe multipath paths: the head namespace is listed
        kind = _kind(root, kname, include_loop)
        if kind is None:
            continue
        disk = read_disk(root, kname, kind, links)
        if disk is not None:
            disks.append(_with_array(disk, found) if kind == "md" else disk)
    return disks


def read_member_disk(root: str, device: str) -> Disk | None:
    """The Disk for a whole disk that ``list_disks`` hides because an array holds it."""
    kname = os.path.basename(device)
    kind = _kind(root, kname, include_loop=True)
    return read_disk(root, kname, kind, _by_path_links(root)) if kind else None


def list_partitions(disk: Disk) -> list[Partition]:
    """Partitions the kernel currently exposes for ``disk``."""
    parts = []
    for entry in sysfs.listdir(disk.sysfs_path):
        part_dir = os.path.join(disk.sysfs_path, entry)
        if not os.path.exists(os.path.join(part_dir, "partition")):
            continue
        devno = _devno(part_dir)
        start = sysfs.read_int(os.path.join(part_dir, "start"))
        size = sysfs.read_int(os.path.join(part_dir, "size"))
        if devno is None or start is None or size is None:
            continue
        parts.append(Partition(f"/dev/{entry}", devno, start * 512, size * 512))
    return parts
