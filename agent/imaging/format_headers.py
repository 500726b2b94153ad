"""Binary header parsers for the image formats ``formats`` recognises.

Each parser reads the structures that decide which files qemu would open and
how large the guest disk is, through a ``Reader`` that bounds every read.
They record what they find on a ``Found``; ``formats`` turns that into policy.
Field offsets follow the published format specifications (qcow2 and qed from
the QEMU docs, VMDK 5, VHD 1.0, VHDX 1.0, the VirtualBox VDI layout, ECMA-119).
"""

from __future__ import annotations

import dataclasses
import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

MiB = 1 << 20
MAX_READ = 2 * MiB
READ_BUDGET = 16 * MiB          # total over one inspection: no header can make us read more

ReadAt = Callable[[int, int], bytes]


class Short(Exception):
    """A structure the verdict depends on could not be read."""


class Reader:
    def __init__(self, read_at: ReadAt, size: int | None) -> None:
        self._read_at = read_at
        self.size = size
        self.spent = 0

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes; fewer when the image (or the head we have) ends."""
        if offset < 0 or length <= 0:
            return b""
        length = min(length, MAX_READ)
        if self.spent + length > READ_BUDGET:
            raise Short(f"inspection would read more than {READ_BUDGET} bytes")
        self.spent += length
        return bytes(self._read_at(offset, length))

    def need(self, offset: int, length: int, what: str) -> bytes:
        data = self.read(offset, length)
        if len(data) < length:
            raise Short(f"{what} at offset {offset} could not be read (the image is "
                        "truncated, or the structure lies beyond the bytes available "
                        "for inspection)")
        return data


@dataclasses.dataclass
class Found:
    format: str
    virtual_size: int | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# --- qcow2 ----------------------------------------------------------------------------

QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_KNOWN = 0x1F     # dirty, corrupt, data file, compression type, extended L2
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_CRYPTO = 0x0537BE77


def _qcow2(r: Reader, head: bytes, f: Found) -> None:
    hdr = r.need(0, 72, "qcow2 header")
    version, bf_off, bf_len, cluster_bits, size, crypt = struct.unpack_from(">IQIIQI", hdr, 4)
    f.virtual_size = size
    f.details.update(version=version, cluster_bits=cluster_bits)
    if version not in (2, 3):
        f.problems.append(f"qcow2 version {version} is not supported")
    if not 9 <= cluster_bits <= 21:
        f.problems.append(f"qcow2 cluster size 2^{cluster_bits} is invalid")
        cluster_bits = 16
    if crypt:
        f.problems.append("the qcow2 image is encrypted")
    if bf_off:
        name = _text(r.read(bf_off, min(bf_len, 1023)))
        f.problems.append(f"the qcow2 image names a backing file ({name!r}); only "
                          "self-contained images are accepted")
    header_len = 72
    if version >= 3:
        incompat, _compat, _autoclear, _order, header_len = struct.unpack(
            ">QQQII", r.need(72, 32, "qcow2 v3 header"))
        if incompat & QCOW2_INCOMPAT_DATA_FILE:
            f.problems.append("the qcow2 image keeps its data in an external data file")
        if incompat & ~QCOW2_INCOMPAT_KNOWN:
            f.problems.append("the qcow2 image sets unknown incompatible feature bits "
                              f"0x{incompat & ~QCOW2_INCOMPAT_KNOWN:x}")
    # qemu reads header extensions up to the end of the first cluster
    end = 1 << cluster_bits
    if bf_off:
        end = min(end, bf_off)
    area = r.need(header_len, max(end - header_len, 0), "qcow2 header extensions")
    pos = 0
    while pos + 8 <= len(area):
        ext, length = struct.unpack_from(">II", area, pos)
        if ext == 0:
            break
        if ext == QCOW2_EXT_DATA_FILE:
            name = _text(area[pos + 8:pos + 8 + min(length, 1023)])
            f.problems.append(f"the qcow2 image names an external data file ({name!r})")
        elif ext == QCOW2_EXT_CRYPTO and not crypt:
            f.problems.append("the qcow2 image carries an encryption header")
        pos += 8 + (length + 7) // 8 * 8


# --- qed ------------------------------------------------------------------------------

QED_F_BACKING_FILE = 1
QED_F_KNOWN = 0x7


def _qed(r: Reader, head: bytes, f: Found) -> None:
    hdr = r.need(0, 64, "qed header")
    features, = struct.unpack_from("<Q", hdr, 16)
    f.virtual_size, bf_off, bf_len = struct.unpack_from("<QII", hdr, 48)
    if features & QED_F_BACKING_FILE:
        name = _text(r.read(bf_off, min(bf_len, 1023)))
        f.problems.append(f"the qed image names a backing file ({name!r})")
    if features & ~QED_F_KNOWN:
        f.problems.append(f"the qed image sets unknown feature bits 0x{features & ~QED_F_KNOWN:x}")


# --- vmdk -----------------------------------------------------------------------------

VMDK_CREATE_TYPES = ("monolithicSparse", "streamOptimized")
VMDK_DESC_MAX = MiB - 1          # qemu reads at most this much descriptor text
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)")?')
_PARENT = re.compile(r'parentFileNameHint\s*=\s*"([^"]*)"')
_CREATE = re.compile(r'^createType\s*=\s*"([^"]*)"', re.M)


def _vmdk_descriptor(text: str, f: Found, where: str) -> None:
    parent = _PARENT.search(text)
    if parent and parent.group(1):
        f.problems.append(f"the vmdk {where} names a parent disk ({parent.group(1)!r})")
    create = _CREATE.search(text)
    if create:
        f.details["create_type"] = create.group(1)
        if create.group(1) not in VMDK_CREATE_TYPES:
            f.problems.append(f"vmdk createType {create.group(1)!r} keeps data outside the "
                              f"image; only {', '.join(VMDK_CREATE_TYPES)} are accepted")
    extents = [m for m in (_EXTENT.match(line.strip()) for line in text.splitlines()) if m]
    for m in extents:
        kind, name = m.group(3), m.group(4) or ""
        if kind != "SPARSE" or "/" in name or len(extents) > 1:
            f.problems.append(f"the vmdk {where} lists a {kind} extent {name!r} outside the "
                              "image")


def _descriptor_text(r: Reader, offset: int) -> str:
    raw = r.read(offset, VMDK_DESC_MAX)
    available = VMDK_DESC_MAX if r.size is None else min(VMDK_DESC_MAX, r.size - offset)
    if b"\0" not in raw and len(raw) < available:
        # qemu would read on past what we were given; what it finds there is unknown
        raise Short(f"the vmdk descriptor at offset {offset} runs past the bytes available "
                     "for inspection")
    return _text(raw)


def _vmdk(r: Reader, head: bytes, f: Found) -> None:
    if head.startswith(b"# Disk DescriptorFile"):
        f.problems.append("the vmdk is a bare descriptor whose data lives in other files")
        _vmdk_descriptor(_descriptor_text(r, 0), f, "descriptor")
        return
    if head.startswith(b"COWD"):
        f.problems.append("legacy COWD (vmdk3) sparse images are not supported")
        return
    hdr = r.need(0, 77, "vmdk header")
    capacity, _grain, desc_off, desc_len = struct.unpack_from("<QQQQ", hdr, 12)
    f.virtual_size = capacity * 512
    if capacity == 0:
        # qemu then takes the disk layout from the embedded descriptor's extents
        f.problems.append("the vmdk header has zero capacity, deferring to its descriptor")
    # qemu looks for a parent hint at sector 1 whatever the header says
    offsets = {512} | ({desc_off * 512} if desc_off else set())
    for off in sorted(offsets):
        _vmdk_descriptor(_descriptor_text(r, off), f, "embedded descriptor")


# --- vdi ------------------------------------------------------------------------------

VDI_SIGNATURE = 0xBEDA107F


def _vdi(r: Reader, head: bytes, f: Found) -> None:
    hdr = r.need(0, 0x190, "vdi header")
    version, _hdr_size, image_type = struct.unpack_from("<III", hdr, 0x44)
    f.virtual_size, = struct.unpack_from("<Q", hdr, 0x170)
    if version >> 16 != 1:
        f.problems.append(f"vdi version 0x{version:08x} is not supported")
    if image_type not in (1, 2):        # dynamic, static; undo and diff have parents
        f.problems.append(f"vdi image type {image_type} depends on another image")


# --- vhd (qemu: vpc) ------------------------------------------------------------------

VHD_FIXED, VHD_DYNAMIC, VHD_DIFFERENCING = 2, 3, 4
VHD_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
VHD_MAX_CHS = 65535 * 16 * 255


def _vhd_footer(footer: bytes, f: Found) -> None:
    creator = footer[28:32]
    current, = struct.unpack_from(">Q", footer, 48)
    cyls, heads, secs, disk_type = struct.unpack_from(">HBBI", footer, 56)
    chs = cyls * heads * secs
    # qemu's rule: some creators size the disk by current_size, others by geometry
    if creator in VHD_SIZE_CREATORS or chs == VHD_MAX_CHS:
        f.virtual_size = current
    else:
        f.virtual_size = chs * 512
    f.details["vhd_type"] = disk_type
    if disk_type == VHD_DIFFERENCING:
        f.problems.append("the vhd is a differencing disk with a parent image")
    elif disk_type not in (VHD_FIXED, VHD_DYNAMIC):
        f.problems.append(f"vhd disk type {disk_type} is not supported")


def _vhd(r: Reader, head: bytes, f: Found) -> None:
    _vhd_footer(r.need(0, 512, "vhd footer"), f)


# --- vhdx -----------------------------------------------------------------------------

VHDX_REGION_TABLE = 192 * 1024
VHDX_METADATA_REGION = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e")
VHDX_FILE_PARAMETERS = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b")
VHDX_VIRTUAL_DISK_SIZE = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8")
VHDX_PARENT_LOCATOR = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c")
VHDX_HAS_PARENT = 0x2


def _vhdx(r: Reader, head: bytes, f: Found) -> None:
    table = r.need(VHDX_REGION_TABLE, 16, "vhdx region table")
    if table[:4] != b"regi":
        f.problems.append("the vhdx region table is missing")
        return
    count = min(struct.unpack_from("<I", table, 8)[0], 2047)
    entries = r.need(VHDX_REGION_TABLE + 16, 32 * count, "vhdx region entries")
    meta = None
    for i in range(count):
        guid = uuid.UUID(bytes_le=entries[32 * i:32 * i + 16])
        if guid == VHDX_METADATA_REGION:
            meta = struct.unpack_from("<Q", entries, 32 * i + 16)[0]
    if meta is None:
        f.problems.append("the vhdx has no metadata region")
        return
    mhdr = r.need(meta, 32, "vhdx metadata table")
    if mhdr[:8] != b"metadata":
        f.problems.append("the vhdx metadata table is missing")
        return
    count = min(struct.unpack_from("<H", mhdr, 10)[0], 2047)
    items = r.need(meta + 32, 32 * count, "vhdx metadata entries")
    for i in range(count):
        guid = uuid.UUID(bytes_le=items[32 * i:32 * i + 16])
        off, = struct.unpack_from("<I", items, 32 * i + 16)
        if guid == VHDX_VIRTUAL_DISK_SIZE:
            f.virtual_size, = struct.unpack("<Q", r.need(meta + off, 8, "vhdx disk size"))
        elif guid == VHDX_FILE_PARAMETERS:
            _block, flags = struct.unpack("<II", r.need(meta + off, 8, "vhdx parameters"))
            if flags & VHDX_HAS_PARENT:
                f.problems.append("the vhdx is a differencing disk with a parent image")
        elif guid == VHDX_PARENT_LOCATOR:
            f.problems.append("the vhdx carries a parent locator")
    if f.virtual_size is None:
        f.problems.append("the vhdx metadata has no virtual disk size")


# --- raw: partition tables and ISO 9660 ------------------------------------------------

def partition_table(r: Reader, head: bytes) -> str | None:
    for sector in (512, 4096):
        gpt = r.read(sector, 16)
        if gpt[:8] == b"EFI PART" and gpt[8:12] == b"\0\0\1\0":
            return "gpt"
    if head[510:512] != b"\x55\xaa":
        return None
    entries = [head[446 + 16 * i:462 + 16 * i] for i in range(4)]
    if any(e[0] not in (0, 0x80) for e in entries):
        return None          # a boot sector (e.g. FAT), not a partition table
    if any(e[4] == 0xEE for e in entries):
        return "gpt"         # protective MBR whose GPT header is out of our reach
    return "mbr" if any(e[4] and struct.unpack_from("<I", e, 12)[0] for e in entries) else None


def iso_size(r: Reader) -> int | None:
    for n in range(16):       # volume descriptors from sector 16, 2 KiB each
        desc = r.read(0x8000 + 2048 * n, 136)
        if len(desc) < 136 or desc[1:6] != b"CD001" or desc[0] == 0xFF:
            return None
        if desc[0] == 1:
            blocks, = struct.unpack_from("<I", desc, 80)
            block_size, = struct.unpack_from("<H", desc, 128)
            return blocks * block_size
    return None


# --- detection ------------------------------------------------------------------------

DETECTORS: tuple[tuple[str, Callable[[bytes], bool], Callable[..., None]], ...] = (
    ("qcow2", lambda h: h[:4] == b"QFI\xfb", _qcow2),
    ("qed", lambda h: h[:4] == b"QED\0", _qed),
    ("vmdk", lambda h: h[:4] in (b"KDMV", b"COWD") or h.startswith(b"# Disk DescriptorFile"),
     _vmdk),
    ("vdi", lambda h: h[0x40:0x44] == struct.pack("<I", VDI_SIGNATURE), _vdi),
    ("vhd", lambda h: h[:8] == b"conectix", _vhd),
    ("vhdx", lambda h: h[:8] == b"vhdxfile", _vhdx),
)
