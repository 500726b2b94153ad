"""What an image is, decided from its own bytes before qemu-img ever opens it.

qemu-img trusts the files it is given: a qcow2 may name a backing file or an
external data file, a vmdk may list extents or a parent in other files, and
qemu follows those names on the host (CVE-2024-44082).  So ``inspect`` parses
the few header structures that decide what qemu would open, and ``check``
refuses anything that is ambiguous, unexpected, not permitted, not
self-contained or too large, before a byte reaches the disk.

Inspection reads a bounded amount: the first 64 KiB, plus reads the headers
direct (qcow2 extensions within the first cluster, a vmdk descriptor of at most
1 MiB, the vhdx region and metadata tables), never more than 16 MiB in all.
A streaming caller can therefore inspect the head of an image it is still
downloading: ``STREAM_HEAD`` bytes cover every image qemu-img creates.  A
read the head cannot satisfy becomes a problem, never a silent pass.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable
from typing import Any, overload

from agent.errors import InvalidImage
from agent.imaging.format_headers import (
    DETECTORS,
    VHD_FIXED,
    Found,
    ReadAt,
    Reader,
    Short,
    iso_size,
    partition_table,
)

HEAD_READ = 64 * 1024
STREAM_HEAD = 8 << 20       # what a streaming caller should buffer before inspecting

CONTAINERS = ("qcow2", "qed", "vmdk", "vhd", "vhdx", "vdi")
RAW_FAMILY = ("raw", "gpt", "iso")          # written byte for byte, no qemu format driver
QEMU_DRIVER = {"raw": "raw", "gpt": "raw", "iso": "raw", "qcow2": "qcow2", "qed": "qed",
               "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx", "vdi": "vdi"}
# names the conductor, Glance or qemu use for the same thing
ALIASES = {"vpc": "vhd", "ami": "raw", "img": "raw"}
UNDECLARED = (None, "", "unknown")


@dataclasses.dataclass(frozen=True)
class Inspection:
    """The verdict on an image.  ``problems`` are reasons it must not be deployed."""

    format: str
    virtual_size: int | None
    partition_table: str | None = None
    matches: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def qemu_format(self) -> str:
        return QEMU_DRIVER[self.format]

    @property
    def conflicts(self) -> tuple[str, ...]:
        """Signatures that cannot coexist; empty for a well-formed image."""
        containers = [m for m in self.matches if m in CONTAINERS]
        others = [m for m in self.matches if m not in CONTAINERS]
        if len(containers) > 1 or (containers and others):
            return tuple(self.matches)
        return ()


def inspect(source: str | bytes | ReadAt, size: int | None = None) -> Inspection:
    """Identify ``source``: a path, the image's head as bytes, or ``read_at(offset, n)``.

    ``size`` is the full image length when known (a path supplies it); it sizes
    raw images and lets a fixed vhd be recognised by its trailing footer.
    """
    if isinstance(source, str):
        with open(source, "rb") as fh:
            fd = fh.fileno()
            if size is None:
                size = os.lseek(fd, 0, os.SEEK_END)
            return _inspect(Reader(lambda off, n: os.pread(fd, n, off), size))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _inspect(Reader(lambda off, n: data[off:off + n], size))
    return _inspect(Reader(source, size))


def _inspect(r: Reader) -> Inspection:
    size = r.size
    head = r.read(0, HEAD_READ)
    found: list[Found] = []
    for name, detects, parse in DETECTORS:
        if detects(head):
            f = Found(name)
            try:
                parse(r, head, f)
            except Short as exc:
                f.problems.append(str(exc))
            found.append(f)
    details: dict[str, Any] = {}
    if not found and size and size >= 1024:
        # a fixed vhd is raw data plus a trailing footer; qemu's own probe calls it
        # raw too, and writing it raw is correct
        footer = r.read(size - 512, 512)
        if footer[:8] == b"conectix" and footer[60:64] == struct.pack(">I", VHD_FIXED):
            details["vhd_footer"] = True
    try:
        table, iso = partition_table(r, head), iso_size(r)
    except Short:
        table, iso = None, None
    names = [f.format for f in found]
    if iso is not None:
        names.append("iso")
    if table:
        names.append(table)
    matches = tuple(names)
    if found:
        best = found[0]
        return Inspection(best.format, best.virtual_size, table, matches,
                          tuple(best.problems), dict(best.details))
    if iso is not None:
        return Inspection("iso", iso, table, matches, details={"iso_size": iso, **details})
    fmt = "gpt" if table == "gpt" else "raw"
    return Inspection(fmt, size, table, matches, details=details)


# --- policy ---------------------------------------------------------------------------

@overload
def normalise(name: str) -> str: ...
@overload
def normalise(name: None) -> None: ...
def normalise(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip().lower()
    return ALIASES.get(name, name)


def _same_kind(declared: str, inspection: Inspection) -> bool:
    detected = inspection.format
    if declared == detected:
        return True
    if declared == "vhd":
        return bool(inspection.details.get("vhd_footer"))
    # the conductor declares 'raw' for anything written byte for byte (an ISO it
    # cached, a GPT disk image); qemu would treat all of them as raw too
    return declared == "raw" and detected in RAW_FAMILY


def _permitted(detected: str, permitted: Iterable[str]) -> bool:
    allowed = {normalise(p) for p in permitted}
    # Ironic lists both 'raw' and 'gpt' for raw disk images with a GPT
    return detected in allowed or (detected == "gpt" and "raw" in allowed)


def check(inspection: Inspection, *, declared_format: str | None = None,
          permitted_formats: Iterable[str] | None = None, device_size: int | None = None,
          image_size: int | None = None) -> None:
    """Raise InvalidImage unless the image may be written to a device of ``device_size``.

    ``declared_format`` is image_info's disk_format (None or 'unknown' skip that
    test); ``permitted_formats`` the configured list (None skips it);
    ``image_size`` the byte length, which is what a raw image occupies.
    """
    fmt = inspection.format
    if inspection.conflicts:
        raise InvalidImage(f"the image matches more than one format "
                           f"({', '.join(inspection.conflicts)}); refusing an ambiguous image")
    declared = normalise(declared_format)
    if declared not in UNDECLARED and not _same_kind(declared, inspection):
        raise InvalidImage(f"the image was declared as disk_format '{declared_format}' but "
                           f"its contents are {fmt}")
    if permitted_formats is not None:
        permitted = list(permitted_formats)
        if not _permitted(fmt, permitted):
            raise InvalidImage(f"the image format {fmt} is not permitted; "
                               f"permitted_image_formats is {', '.join(permitted) or 'empty'}")
    if inspection.problems:
        raise InvalidImage(f"unsafe {fmt} image: " + "; ".join(inspection.problems))
    needed = inspection.virtual_size
    if fmt in RAW_FAMILY and image_size is not None:
        needed = image_size
    if device_size is not None and needed is not None and needed > device_size:
        raise InvalidImage(f"the {fmt} image needs {needed} bytes ({needed / 2**30:.2f} GiB) "
                           f"but the target device holds only {device_size} bytes "
                           f"({device_size / 2**30:.2f} GiB)")


def qemu_driver(name: str) -> str:
    """qemu's driver name for one of our format names (or a qemu name itself)."""
    fmt = normalise(name)
    if fmt in QEMU_DRIVER:
        return QEMU_DRIVER[fmt]
    if fmt in QEMU_DRIVER.values():
        return fmt
    raise InvalidImage(f"unsupported image format {name!r}")
