"""What a target block device is, and whether it is safe to overwrite.

Everything here reads sysfs and /proc directly (no udev daemon is assumed).
``check_target`` runs before a single byte is written; each refusal is an
UnsafeDevice (HTTP 400 class) that says exactly why.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from agent.errors import DeviceNotFound, UnsafeDevice

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268


def _sys_name(device: str) -> str:
    st = os.stat(device)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    link = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
    return os.path.basename(link)


def size_bytes(fd: int) -> int:
    return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]


def logical_sector_size(fd: int) -> int:
    return struct.unpack("I", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]


def partitions_of(name: str) -> list[str]:
    """Kernel names of the partitions the kernel currently knows for disk ``name``."""
    base = f"/sys/block/{name}"
    try:
        return sorted(e for e in os.listdir(base)
                      if os.path.exists(os.path.join(base, e, "partition")))
    except OSError:
        return []


def _numbers_of(name: str) -> str | None:
    try:
        with open(f"/sys/class/block/{name}/dev", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def mounts_using(names: list[str], mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points whose source is one of the kernel block names (by major:minor)."""
    wanted = {n for n in (_numbers_of(x) for x in names) if n}
    found = []
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[2] in wanted:
                    found.append(parts[4])
    except OSError:
        pass
    try:
        with open("/proc/swaps", encoding="utf-8") as f:
            for line in f.readlines()[1:]:
                dev = line.split()[0] if line.split() else ""
                if os.path.basename(dev) in names:
                    found.append(f"swap on {dev}")
    except OSError:
        pass
    return found


def holders_of(names: list[str]) -> list[str]:
    held: list[str] = []
    for name in names:
        try:
            entries = os.listdir(f"/sys/class/block/{name}/holders")
            held.extend(f"{h} (holds {name})" for h in entries)
        except OSError:
            continue
    return held


def root_device_names() -> set[str]:
    """Kernel names of the block devices backing / (empty for an initramfs)."""
    st = os.stat("/")
    if os.major(st.st_dev) == 0:
        return set()
    link = os.path.realpath(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    names = {os.path.basename(link)}
    parent = os.path.basename(os.path.dirname(link))
    if os.path.exists(os.path.join(link, "partition")):
        names.add(parent)
    return names


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
    family = [name, *partitions_of(name)]
    if name in root_device_names() or root_device_names() & set(family):
        raise UnsafeDevice(f"{device} holds the running system's root filesystem")
    mounted = mounts_using(family)
    if mounted:
        raise UnsafeDevice(f"{device} is in use: mounted at {', '.join(mounted)}")
    held = holders_of(family)
    if held:
        raise UnsafeDevice(f"{device} is in use by {', '.join(held)} (md, dm or LVM)")
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
