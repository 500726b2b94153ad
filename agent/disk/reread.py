"""Make the kernel's view of a disk's partitions match the on-disk table, deterministically.

First BLKRRPART (retried while EBUSY).  The kernel may parse nothing (built
without MSDOS/EFI parsers, or a loop device without partscan, which answers
EINVAL) or refuse because a partition is in use; in every case where sysfs
then differs from what our own reader found, we do what ``partx`` does and
add/delete exactly those partitions with BLKPG.  Finally we poll, with a
deadline, until exactly the expected partitions exist in /sys/block and as
block nodes in /dev (creating nodes ourselves when no udev or devtmpfs does).
md arrays are read the same way: their partitions (md127p1) sit in sysfs
beside md/, slaves/ and holders/, which carry no ``partition`` attribute.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import logging
import os
import stat
import time

from agent.disk import partition_table as pt
from agent.disk import usage
from agent.errors import DeploymentError, DeviceNotFound

LOG = logging.getLogger(__name__)

BLKRRPART = 0x125F
BLKPG = 0x1269
_BLKPG_ADD, _BLKPG_DEL = 1, 2
SYS_BLOCK = "/sys/class/block"
DEV = "/dev"
EBUSY_RETRIES = 5


class _BlkpgPartition(ctypes.Structure):
    _fields_ = [("start", ctypes.c_longlong), ("length", ctypes.c_longlong),
                ("pno", ctypes.c_int), ("devname", ctypes.c_char * 64),
                ("volname", ctypes.c_char * 64)]


class _BlkpgArg(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int), ("flags", ctypes.c_int), ("datalen", ctypes.c_int),
                ("data", ctypes.c_void_p)]


@dataclasses.dataclass
class RereadResult:
    disk: str
    method: str                # 'kernel', 'unchanged' (kernel refused, already right), 'blkpg'
    partitions: dict[int, str]                   # number -> /dev node
    blkrrpart_error: str | None = None
    attempts: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def disk_name(disk: str) -> str:
    """Kernel name of a whole disk (``sda``), following /dev symlinks."""
    name = os.path.basename(os.path.realpath(disk))
    if not os.path.isdir(os.path.join(SYS_BLOCK, name)):
        raise DeviceNotFound(f"{disk} is not a block device known to the kernel")
    if os.path.exists(os.path.join(SYS_BLOCK, name, "partition")):
        raise DeviceNotFound(f"{disk} is a partition, not a whole disk")
    return name


def partition_device(disk: str, number: int) -> str:
    """The /dev node of partition ``number`` (sda1, loop0p1, nvme0n1p1, mmcblk0p1)."""
    name = os.path.basename(os.path.realpath(disk))
    for entry, info in _sysfs_partitions(name).items():
        if info[0] == number:
            return os.path.join(DEV, entry)
    return os.path.join(DEV, _part_name(name, number))


def partition_parent(partition: str) -> tuple[str, int]:
    """(/dev disk, number) for a partition node, read from sysfs."""
    name = os.path.basename(os.path.realpath(partition))
    base = os.path.join(SYS_BLOCK, name)
    try:
        number = int(_read(os.path.join(base, "partition")))
    except (OSError, ValueError):
        raise DeviceNotFound(f"{partition} is not a partition known to the kernel") from None
    parent = os.path.basename(os.path.dirname(os.path.realpath(base)))
    return os.path.join(DEV, parent), number


def reread(disk: str, *, table: pt.PartitionTable | None = None,
           timeout: float = 30.0) -> RereadResult:
    """Bring the kernel's partitions of ``disk`` in line with ``table`` (default: read it)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    name = disk_name(disk)
    table = table if table is not None else pt.read_table(disk)
    expected = _expected(name, table)
    result = RereadResult(disk=os.path.join(DEV, name), method="kernel", partitions={})
    fd = os.open(os.path.realpath(disk), os.O_RDONLY | os.O_CLOEXEC)
    try:
        result.blkrrpart_error, result.attempts = _blkrrpart(fd, deadline)
        result.timings["blkrrpart"] = time.monotonic() - t0
        if _sysfs_partitions(name) == expected:
            result.method = "unchanged" if result.blkrrpart_error else "kernel"
        else:
            t1 = time.monotonic()
            result.method = "blkpg"
            _blkpg_sync(fd, name, expected, result.blkrrpart_error)
            result.timings["blkpg"] = time.monotonic() - t1
    finally:
        os.close(fd)
    t2 = time.monotonic()
    result.partitions = _wait_nodes(name, expected, deadline, result.blkrrpart_error)
    result.timings["wait"] = time.monotonic() - t2
    result.timings["total"] = time.monotonic() - t0
    LOG.info("partition table of %s re-read via %s in %.3fs (%s)", result.disk, result.method,
             result.timings["total"], ", ".join(f"{k}={v:.3f}s" for k, v in
                                                result.timings.items()))
    return result


def holders(disk: str) -> list[str]:
    """Human-readable reasons why the disk or its partitions are busy."""
    # the re-read opens the disk itself: its own descriptor is no reason
    found = usage.UsageSnapshot(exempt_self=True).uses(disk)
    return [use.describe() for use in found]


# --- kernel interaction ------------------------------------------------------------------

def _blkrrpart(fd: int, deadline: float) -> tuple[str | None, int]:
    """Return (error text or None, attempts); EBUSY is retried with backoff."""
    delay, attempts = 0.05, 0
    while True:
        attempts += 1
        try:
            fcntl.ioctl(fd, BLKRRPART)
            return None, attempts
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempts >= EBUSY_RETRIES \
                    or time.monotonic() + delay > deadline:
                return f"BLKRRPART failed: {os.strerror(exc.errno or 0)}", attempts
        time.sleep(delay)   # back off while whoever holds the disk finishes
        delay *= 2


def _blkpg(fd: int, op: int, number: int, start: int = 0, length: int = 0) -> None:
    part = _BlkpgPartition(start=start, length=length, pno=number)
    arg = _BlkpgArg(op=op, flags=0, datalen=ctypes.sizeof(part),
                    data=ctypes.cast(ctypes.pointer(part), ctypes.c_void_p))
    fcntl.ioctl(fd, BLKPG, bytes(arg))


def _blkpg_sync(fd: int, name: str, expected: dict[str, tuple[int, int, int]],
                why: str | None) -> None:
    current = _sysfs_partitions(name)
    stale = {k: v for k, v in current.items() if expected.get(k) != v}
    missing = {k: v for k, v in expected.items() if current.get(k) != v}
    errors = []
    for part, (number, _start, _size) in sorted(stale.items()):
        try:
            _blkpg(fd, _BLKPG_DEL, number)
        except OSError as exc:
            errors.append(f"removing stale partition {part}: {os.strerror(exc.errno or 0)}")
    for part, (number, start, size) in sorted(missing.items(), key=lambda kv: kv[1][0]):
        try:
            _blkpg(fd, _BLKPG_ADD, number, start, size)
        except OSError as exc:
            errors.append(f"adding partition {part}: {os.strerror(exc.errno or 0)}")
    if errors:
        raise _failure(name, "; ".join(errors), why)


def _wait_nodes(name: str, expected: dict[str, tuple[int, int, int]], deadline: float,
                why: str | None) -> dict[int, str]:
    delay = 0.005
    udev = os.path.exists("/run/udev/control")
    grace = time.monotonic() + (deadline - time.monotonic()) / 2 if udev else 0.0
    while True:
        current = _sysfs_partitions(name)
        pending = [p for p in expected if not _node_ok(p)] if current == expected else None
        if pending == []:
            return {num: os.path.join(DEV, p) for p, (num, _s, _z) in expected.items()}
        if pending and time.monotonic() >= grace:
            for part in pending:
                _make_node(part)
            continue
        if time.monotonic() + delay > deadline:
            detail = (f"kernel has partitions {sorted(current)}, expected {sorted(expected)}"
                      if pending is None else f"device nodes missing: {pending}")
            raise _failure(name, detail, why)
        time.sleep(delay)   # polling sysfs/dev; there is nothing to wait on instead
        delay = min(delay * 2, 0.1)


def _failure(name: str, detail: str, why: str | None) -> DeploymentError:
    busy = holders(os.path.join(DEV, name))
    text = f"the kernel did not take the new partition table of /dev/{name}: {detail}"
    if why:
        text += f" ({why})"
    text += "; " + ("; ".join(busy) if busy else "no holder found (mounts, swap, md, dm, "
                    "open files)")
    return DeploymentError(text)


# --- sysfs and /dev ----------------------------------------------------------------------

def _part_name(disk: str, number: int) -> str:
    return f"{disk}{'p' if disk[-1].isdigit() else ''}{number}"


def _expected(name: str, table: pt.PartitionTable) -> dict[str, tuple[int, int, int]]:
    """Kernel view of ``table``: name -> (number, start bytes, length bytes)."""
    result = {}
    for p in table.partitions:
        size = p.size_bytes
        if p.mbr_role == "extended":
            # like the kernel, expose only the first sector(s) of an extended partition
            size = min(size, max(table.sector_size, 1024))
        result[_part_name(name, p.number)] = (p.number, p.start_bytes, size)
    return result


def _sysfs_partitions(name: str) -> dict[str, tuple[int, int, int]]:
    base = os.path.join(SYS_BLOCK, name)
    parts = {}
    for entry in _listdir(base):
        try:
            number = int(_read(os.path.join(base, entry, "partition")))
            start = int(_read(os.path.join(base, entry, "start"))) * 512
            size = int(_read(os.path.join(base, entry, "size"))) * 512
        except (OSError, ValueError):
            continue
        parts[entry] = (number, start, size)
    return parts


def _devnum(name: str) -> int | None:
    try:
        major, minor = _read(os.path.join(SYS_BLOCK, name, "dev")).split(":")
    except (OSError, ValueError):
        return None
    return os.makedev(int(major), int(minor))


def _node_ok(part: str) -> bool:
    try:
        st = os.stat(os.path.join(DEV, part))
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) and st.st_rdev == _devnum(part)


def _make_node(part: str) -> None:
    dev = _devnum(part)
    if dev is None:
        return
    path = os.path.join(DEV, part)
    if os.path.lexists(path):
        # a stale node from an earlier table points at the wrong device numbers
        os.unlink(path)
    try:
        os.mknod(path, 0o600 | stat.S_IFBLK, dev)
    except FileExistsError:
        pass   # devtmpfs or udev created it meanwhile; the next poll checks it


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(path: str, default: str | None = None) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        if default is None:
            raise
        return default
