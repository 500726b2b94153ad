"""What a target block device is, whether it is safe to overwrite, and wiping its tables.

Everything here reads sysfs and /proc directly (no udev daemon is assumed).
``check_target`` runs before a single byte is written; each refusal is an
UnsafeDevice (HTTP 400 class) that says exactly why.  ``zero_edges`` is the
one routine that makes a disk unbootable by zeroing both of its ends.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Iterable

from agent.disk import usage
from agent.errors import DeviceNotFound, UnsafeDevice

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
EDGE = 1 << 20                 # the first and last MiB hold every partition table


def _sys_name(device: str) -> str:
    st = os.stat(device)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    link = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
    return os.path.basename(link)


def size_bytes(fd: int) -> int:
    return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]


def logical_sector_size(fd: int) -> int:
    return struct.unpack("I", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]


def check_target(device: str, *, image_size: int | None = None,
                 allow_loop: bool = False) -> int:
    """Refuse anything but an idle whole disk large enough; return its size."""
    try:
        st = os.stat(device)
    except OSError as exc:
        raise DeviceNotFound(f"{device} does not exist: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise UnsafeDevice(f"{device} is not a block device")
    name = _sys_name(device)
    if os.path.exists(f"/sys/class/block/{name}/partition"):
        raise UnsafeDevice(f"{device} is a partition, not a whole disk")
    if name.startswith("loop") and not allow_loop:
        raise UnsafeDevice(f"{device} is a loop device; start the agent with "
                           "--include-loop-devices to allow it")
    if name.startswith(("ram", "zram")):
        raise UnsafeDevice(f"{device} is a RAM disk")
    # our own descriptors are the writer's and its readers'; a second writer
    # inside the agent is kept out by the exclusive open below
    uses = usage.UsageSnapshot(exempt_self=True).uses(name)
    if uses:
        raise UnsafeDevice(f"{device} is in use: {usage.summary(uses)}")
    try:
        with open(f"/sys/class/block/{name}/ro", encoding="ascii") as f:
            if f.read().strip() == "1":
                raise UnsafeDevice(f"{device} is read-only")
    except OSError:
        pass
    fd = open_exclusive(device, os.O_RDONLY)
    try:
        size = size_bytes(fd)
    finally:
        os.close(fd)
    if image_size is not None and image_size > size:
        raise UnsafeDevice(f"the image ({image_size} bytes) is larger than {device} "
                           f"({size} bytes)")
    return size


def open_exclusive(device: str, flags: int) -> int:
    """O_EXCL on a block device fails while anything mounts or holds it."""
    try:
        return os.open(device, flags | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise UnsafeDevice(f"{device} is busy: it is mounted or held open exclusively "
                               "by another user (md, dm, LVM or a filesystem)") from None
        raise UnsafeDevice(f"cannot open {device}: {exc.strerror}") from None


def zero_edges(target: int | str, size: int | None = None, *, edge: int = EDGE,
               extra_ends: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Zero the first and last ``edge`` bytes of a disk, and ``edge`` before each extra end.

    The MBR, both GPT headers and both GPT entry arrays lie within the first
    and last MiB whatever the sector size; an image smaller than the disk has
    its backup GPT at the image's end, which ``extra_ends`` names.  ``target``
    is an open descriptor (used as is, O_DIRECT included) or a path.  Synced
    before returning; returns the (start, end) ranges written.
    """
    fd = target if isinstance(target, int) else os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if size is None:
            size = os.lseek(fd, 0, os.SEEK_END)
        align = 1
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            # direct I/O moves whole logical sectors only; widen each range to them
            try:
                align = logical_sector_size(fd)
            except OSError:
                align = 4096
        ranges = _merge([(0, edge), (size - edge, size)]
                        + [(end - edge, end) for end in extra_ends], size, align)
        longest = max((end - start for start, end in ranges), default=0)
        if longest:
            # an anonymous mapping is page-aligned, as O_DIRECT wants its buffer
            with mmap.mmap(-1, longest) as zeros:
                view = memoryview(zeros)
                try:
                    for start, end in ranges:
                        done = start
                        while done < end:
                            done += os.pwrite(fd, view[:end - done], done)
                finally:
                    view.release()
        os.fsync(fd)
        return ranges
    finally:
        if not isinstance(target, int):
            os.close(fd)


def _merge(ranges: list[tuple[int, int]], size: int, align: int) -> list[tuple[int, int]]:
    """Clamp to [0, size), widen to ``align``, sort and join overlapping ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        start = max(0, start) // align * align
        end = min(size, -(-end // align) * align)
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
