"""A pure-Python reader for GPT and MBR partition tables.

We read tables ourselves instead of parsing tool output so that every change
made by sgdisk/sfdisk can be verified independently, and so that the kernel
can be told about exactly these partitions (BLKPG) when it does not parse the
table itself.  Both GPT copies are checked (header CRC and entry-array CRC);
a broken primary with a good backup is reported and the backup is used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import stat
import struct
import uuid
import zlib
from typing import NamedTuple

BLKSSZGET = 0x1268

# Well-known GPT partition type GUIDs (lowercase, as uuid.UUID prints them).
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
PREP_GUID = "9e1a2d38-c612-4316-aa26-8b49521e5a8b"
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
LINUX_SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"

# MBR partition type bytes.
MBR_LINUX = 0x83
MBR_SWAP = 0x82
MBR_ESP = 0xEF
MBR_PREP = 0x41
MBR_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)

# 32-bit LBA fields: an MBR partition cannot reach beyond this many sectors.
MBR_MAX_SECTORS = 2 ** 32

_GPT_SIGNATURE = b"EFI PART"
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")


class _GptHeader(NamedTuple):
    signature: bytes
    revision: int
    header_size: int
    header_crc: int
    reserved: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: bytes
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_MAX_ENTRIES = 4096          # far above any real table; bounds reads of corrupt headers
_MAX_LOGICAL = 128


@dataclasses.dataclass(frozen=True)
class Partition:
    number: int
    first_lba: int
    last_lba: int
    start_bytes: int
    size_bytes: int
    type_guid: str | None = None
    unique_guid: str | None = None
    name: str = ""
    mbr_type: int | None = None
    bootable: bool = False
    attributes: int = 0
    mbr_role: str | None = None      # 'primary' | 'extended' | 'logical' on MBR disks

    @property
    def end_bytes(self) -> int:
        return self.start_bytes + self.size_bytes


@dataclasses.dataclass
class PartitionTable:
    kind: str | None                 # 'gpt' | 'mbr' | None
    sector_size: int
    disk_size: int
    disk_guid: str | None = None
    disk_signature: int = 0
    partitions: list[Partition] = dataclasses.field(default_factory=list)
    primary_ok: bool = False
    backup_ok: bool = False
    backup_lba: int | None = None    # where the primary header says the backup lives
    first_usable_lba: int | None = None
    last_usable_lba: int | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def last_lba(self) -> int:
        return self.disk_size // self.sector_size - 1

    @property
    def ok(self) -> bool:
        """The table is present and fully consistent (both GPT copies good)."""
        if self.kind == "gpt":
            return self.primary_ok and self.backup_ok and not self.backup_misplaced
        return self.kind == "mbr" and not self.problems

    @property
    def backup_misplaced(self) -> bool:
        """GPT backup header is not on the last sector (a small image on a big disk)."""
        return self.kind == "gpt" and self.backup_lba is not None \
            and self.backup_lba != self.last_lba

    @property
    def primary_count(self) -> int:
        return sum(1 for p in self.partitions if p.mbr_role in ("primary", "extended"))

    def get(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


class _Source:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.lseek(fd, 0, os.SEEK_END)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.size:
            return b""
        return os.pread(self.fd, min(length, self.size - offset), offset)


def logical_sector_size(fd: int) -> int | None:
    """Logical sector size of a block device, None for regular files."""
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        return None
    buf = fcntl.ioctl(fd, BLKSSZGET, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def read_table(source: str | int, sector_size: int | None = None) -> PartitionTable:
    """Read the partition table of a disk, disk image or open file descriptor."""
    if isinstance(source, int):
        return _read_fd(source, sector_size)
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd, sector_size)
    finally:
        os.close(fd)


def mbr_disk_signature(source: str | int) -> str:
    """The MBR disk signature as Ironic stores it for whole-disk images."""
    if isinstance(source, int):
        raw = os.pread(source, 4, 440)
    else:
        with open(source, "rb") as f:
            f.seek(440)
            raw = f.read(4)
    value = struct.unpack("<I", raw)[0] if len(raw) == 4 else 0
    return f"0x{value:08x}"


def _read_fd(fd: int, sector_size: int | None) -> PartitionTable:
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        # Pages cached through the whole-disk node go stale when a partition
        # node was written; drop them so we read what is on the medium.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    src = _Source(fd)
    sector_size = sector_size or logical_sector_size(fd) or _guess_sector_size(src)
    table = PartitionTable(kind=None, sector_size=sector_size, disk_size=src.size)
    if src.size < 2 * sector_size:
        table.problems.append(f"device too small ({src.size} bytes) to hold a partition table")
        return table
    mbr = src.read(0, 512)
    table.disk_signature = struct.unpack_from("<I", mbr, 440)[0]
    has_magic = mbr[510:512] == b"\x55\xaa"
    entries = [_MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)]
    protective = has_magic and any(e[2] == MBR_GPT_PROTECTIVE for e in entries)
    if protective or (not has_magic and src.read(sector_size, 8) == _GPT_SIGNATURE):
        table.kind = "gpt"
        if not protective:
            table.problems.append("GPT header present but no protective MBR")
        _read_gpt(src, table)
    elif has_magic:
        _read_mbr(src, table, mbr, entries)
    return table


def _guess_sector_size(src: _Source) -> int:
    for size in (512, 4096):
        if src.read(size, 8) == _GPT_SIGNATURE:
            return size
    for size in (512, 4096):
        if src.size >= size and src.read(src.size - size, 8) == _GPT_SIGNATURE:
            return size
    return 512


# --- GPT ---------------------------------------------------------------------------------

def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _gpt_copy(src: _Source, lba: int, ss: int, which: str
              ) -> tuple[_GptHeader | None, list[Partition] | None, list[str]]:
    """Parse one GPT copy; return (header fields, partitions, problems)."""
    raw = src.read(lba * ss, ss)
    if len(raw) < _GPT_HEADER.size or raw[:8] != _GPT_SIGNATURE:
        return None, None, [f"{which} GPT header missing at LBA {lba}"]
    hdr = _GptHeader(*_GPT_HEADER.unpack_from(raw))
    hsize, hcrc, my_lba = hdr.header_size, hdr.header_crc, hdr.my_lba
    entries_lba, count, esize, ecrc = (hdr.entries_lba, hdr.entry_count, hdr.entry_size,
                                       hdr.entries_crc)
    if not 92 <= hsize <= ss:
        return None, None, [f"{which} GPT header has invalid size {hsize}"]
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        return None, None, [f"{which} GPT header CRC mismatch at LBA {lba}"]
    if my_lba != lba:
        return None, None, [f"{which} GPT header at LBA {lba} claims to be at LBA {my_lba}"]
    if count > _MAX_ENTRIES or esize < _GPT_ENTRY.size or esize % 8 or esize > 4096:
        return hdr, None, [f"{which} GPT header has implausible entry array "
                           f"({count} entries of {esize} bytes)"]
    array = src.read(entries_lba * ss, count * esize)
    if len(array) != count * esize:
        return hdr, None, [f"{which} GPT entry array at LBA {entries_lba} is truncated"]
    if zlib.crc32(array) != ecrc:
        return hdr, None, [f"{which} GPT entry array CRC mismatch"]
    parts = []
    for i in range(count):
        tguid, uguid, first, last, attrs, name = _GPT_ENTRY.unpack_from(array, i * esize)
        if tguid == b"\0" * 16:
            continue
        parts.append(Partition(
            number=i + 1, first_lba=first, last_lba=last, start_bytes=first * ss,
            size_bytes=(last - first + 1) * ss, type_guid=_guid(tguid),
            unique_guid=_guid(uguid), name=name.decode("utf-16-le", "replace").split("\0")[0],
            bootable=bool(attrs & 4), attributes=attrs))
    return hdr, parts, []


def _read_gpt(src: _Source, table: PartitionTable) -> None:
    ss = table.sector_size
    hdr, parts, problems = _gpt_copy(src, 1, ss, "primary")
    table.problems += problems
    table.primary_ok = parts is not None
    # A readable primary header says where the backup is; otherwise the backup
    # is expected on the last sector of the disk.
    backup_lba = hdr.alternate_lba if hdr is not None else table.last_lba
    bhdr, bparts, bproblems = _gpt_copy(src, backup_lba, ss, "backup")
    if bhdr is None and backup_lba != table.last_lba:
        bhdr, bparts, bproblems = _gpt_copy(src, table.last_lba, ss, "backup")
        backup_lba = table.last_lba
    table.problems += bproblems
    table.backup_ok = bparts is not None
    table.backup_lba = backup_lba if bhdr is not None else (
        hdr.alternate_lba if hdr else None)
    use, used = (hdr, parts) if parts is not None else (bhdr, bparts)
    if used is None or use is None:
        table.problems.append("no valid GPT copy found")
        other = 4096 if ss == 512 else 512
        if src.read(other, 8) == _GPT_SIGNATURE:
            table.problems.append(f"a GPT header exists for {other}-byte sectors, but the "
                                  f"device uses {ss}-byte sectors")
        return
    if parts is None:
        table.problems.append(f"using backup GPT at LBA {backup_lba}")
    elif bparts is not None and parts != bparts:
        table.problems.append("primary and backup GPT entry arrays differ")
    table.first_usable_lba, table.last_usable_lba = use.first_usable_lba, use.last_usable_lba
    table.disk_guid = _guid(use.disk_guid)
    # Like the kernel, ignore entries that do not fit on the disk.
    table.partitions = [p for p in used if p.first_lba <= p.last_lba <= table.last_lba]
    for p in used:
        if p not in table.partitions:
            table.problems.append(f"partition {p.number} (LBA {p.first_lba}-{p.last_lba}) "
                                  f"does not fit on the disk; ignored")
    if table.backup_misplaced:
        table.problems.append(f"backup GPT at LBA {table.backup_lba} is not at the end of "
                              f"the disk (LBA {table.last_lba})")


# --- MBR ---------------------------------------------------------------------------------

def _read_mbr(src: _Source, table: PartitionTable, mbr: bytes, entries: list) -> None:
    ss = table.sector_size
    # A FAT boot sector also ends in 55aa; like the kernel, insist on sane boot flags.
    if any(e[0] not in (0, 0x80) for e in entries):
        table.problems.append("boot sector signature without a valid partition table")
        return
    if all(e[2] == 0 for e in entries) and mbr[0] in (0xEB, 0xE9) \
            and b"FAT" in (mbr[54:57], mbr[82:85]):
        table.problems.append("FAT filesystem without a partition table")
        return
    table.kind = "mbr"
    for i, (flag, _chs1, ptype, _chs2, start, count) in enumerate(entries):
        if ptype == 0 or count == 0:
            continue
        role = "extended" if ptype in MBR_EXTENDED else "primary"
        table.partitions.append(_mbr_part(i + 1, start, count, ptype, flag, ss, role))
        if role == "extended":
            _read_logical(src, table, start)
    _check_overlap(table)


def _mbr_part(number: int, start: int, count: int, ptype: int, flag: int, ss: int,
              role: str) -> Partition:
    return Partition(number=number, first_lba=start, last_lba=start + count - 1,
                     start_bytes=start * ss, size_bytes=count * ss, mbr_type=ptype,
                     bootable=flag == 0x80, mbr_role=role)


def _read_logical(src: _Source, table: PartitionTable, ext_start: int) -> None:
    ss = table.sector_size
    ebr_lba, number, seen = ext_start, 5, set[int]()
    while ebr_lba not in seen and len(seen) < _MAX_LOGICAL:
        seen.add(ebr_lba)
        ebr = src.read(ebr_lba * ss, 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            table.problems.append(f"extended boot record at LBA {ebr_lba} is invalid")
            return
        first = _MBR_ENTRY.unpack_from(ebr, 446)
        link = _MBR_ENTRY.unpack_from(ebr, 462)
        if first[2] and first[5]:
            table.partitions.append(_mbr_part(number, ebr_lba + first[4], first[5], first[2],
                                              first[0], ss, "logical"))
            number += 1
        if not link[2] or not link[5]:
            return
        ebr_lba = ext_start + link[4]


def _check_overlap(table: PartitionTable) -> None:
    spans = sorted((p.first_lba, p.last_lba, p.number) for p in table.partitions
                   if p.mbr_role != "extended")
    for (_a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:], strict=False):
        if b0 <= a1:
            table.problems.append(f"partitions {an} and {bn} overlap")
    for p in table.partitions:
        if p.end_bytes > table.disk_size:
            table.problems.append(f"partition {p.number} extends beyond the end of the disk")
