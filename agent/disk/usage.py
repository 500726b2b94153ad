"""Who uses a disk: the root filesystem, mounts, swap, stacked devices, open descriptors.

One answer to "may I touch this disk?" for every caller.  A ``UsageSnapshot``
reads /proc once (mounts, swaps and every process's open block devices) and
then answers for any disk and its partitions, reading holders (md, dm) from
sysfs.  Each finding is a ``Use`` that callers can test by kind and show to
operators with ``describe()``.

One exemption policy: udev's probers are never users, and this process is
not one when the caller says so (it holds its own descriptors to the disk).
Every reader takes a ``root`` so tests can feed a procfs/sysfs-shaped tree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Iterable

from agent.disk import sysfs

LOG = logging.getLogger(__name__)

# udev opens every device closed after a write to probe it again (blkid and
# friends); those brief opens are not users of the disk, and counting them
# would make every guard fail at random right after a write
UDEV_PROBERS = frozenset({"systemd-udevd", "udevd", "(udev-worker)"})

# in the order callers show them: the worst news first
KINDS = ("root", "mounted", "swap", "holder", "open")

# a mount point list longer than this says more than an operator can use
_MAX_MOUNT_POINTS = 4
_OCTAL = re.compile(r"\\([0-7]{3})")
_DM_KINDS = {"LVM-": "LVM", "CRYPT-": "dm-crypt", "mpath-": "multipath", "part": "kpartx"}


@dataclasses.dataclass(frozen=True)
class Use:
    """One reason a device is busy."""
    kind: str       # one of KINDS
    device: str     # the /dev node (disk or partition) that is used
    detail: str = ""  # mount points, the holder, or the process

    def describe(self) -> str:
        if self.kind == "root":
            return f"{self.device} holds the running system's root filesystem"
        if self.kind == "mounted":
            return f"{self.device} is mounted on {self.detail}"
        if self.kind == "swap":
            return f"{self.device} is in use as swap"
        if self.kind == "holder":
            return f"{self.device} is held by {self.detail}"
        return f"{self.device} is open by {self.detail}"


@dataclasses.dataclass(frozen=True)
class Node:
    """A disk or partition to check: its /dev name, device number and sysfs directory."""
    device: str
    devno: int
    sysfs_dir: str


def _devno(text: str | None) -> int | None:
    try:
        major, minor = (text or "").split(":")
        return os.makedev(int(major), int(minor))
    except ValueError:
        return None


def family(disk: str, root: str = "/") -> list[Node]:
    """The disk (a /dev path or a kernel name) and the partitions the kernel knows for it."""
    name = os.path.basename(os.path.realpath(disk)) if "/" in disk else disk
    base = sysfs.path(root, "/sys/class/block", name)
    nodes = []
    for entry, directory in [(name, base)] + [(e, os.path.join(base, e))
                                              for e in sysfs.listdir(base)]:
        if entry != name and not os.path.exists(os.path.join(directory, "partition")):
            continue
        devno = _devno(sysfs.read_str(os.path.join(directory, "dev")))
        if devno is not None:
            nodes.append(Node(f"/dev/{entry}", devno, directory))
    return nodes


def _mounts(root: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in (sysfs.read_str(sysfs.path(root, "/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        devno = _devno(fields[2]) if len(fields) > 4 else None
        if devno is not None:
            # mountinfo escapes blanks and backslashes as octal
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            found.setdefault(devno, []).append(point)
    return found


def root_devnos(root: str = "/") -> set[int]:
    """Device numbers backing /: its own, and those under it through dm or md (slaves)."""
    mounts = [line.split() for line in
              (sysfs.read_str(sysfs.path(root, "/proc/self/mountinfo")) or "").splitlines()]
    # the last mount on / is the one on top; an initramfs's rootfs has no block device
    tops = [_devno(f[2]) for f in mounts if len(f) > 4 and f[4] == "/"]
    todo = [tops[-1]] if tops and tops[-1] is not None else []
    found: set[int] = set()
    while todo:
        devno = todo.pop()
        if devno in found:
            continue
        found.add(devno)
        base = sysfs.path(root, "/sys/dev/block", f"{os.major(devno)}:{os.minor(devno)}")
        for slave in sysfs.listdir(os.path.join(base, "slaves")):
            below = _devno(sysfs.read_str(os.path.join(base, "slaves", slave, "dev")))
            if below is not None:
                todo.append(below)
    return found


def root_device_names(root: str = "/") -> set[str]:
    """Kernel names of the block devices backing / (empty for an initramfs)."""
    names = set()
    for devno in root_devnos(root):
        link = sysfs.realpath(sysfs.path(root, "/sys/dev/block",
                                         f"{os.major(devno)}:{os.minor(devno)}"))
        if link:
            names.add(os.path.basename(link))
    return names


def _swaps(root: str) -> set[int]:
    found = set()
    for line in (sysfs.read_str(sysfs.path(root, "/proc/swaps")) or "").splitlines()[1:]:
        if not line.split():
            continue
        try:
            # by device number: /proc/swaps may name a /dev/mapper or by-id alias
            st = os.stat(sysfs.path(root, line.split()[0]))
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            found.add(st.st_rdev)
    return found


def _holder(holders_dir: str, holder: str) -> str:
    """'device-mapper /dev/dm-0 (vg-root, LVM)' or 'md RAID /dev/md0 (raid1)'."""
    base = os.path.join(holders_dir, holder)
    if os.path.isdir(os.path.join(base, "dm")) or holder.startswith("dm-"):
        uuid = sysfs.read_str(os.path.join(base, "dm", "uuid")) or ""
        labels = [sysfs.read_str(os.path.join(base, "dm", "name")) or ""]
        labels += [kind for prefix, kind in _DM_KINDS.items() if uuid.startswith(prefix)]
        kind = "device-mapper"
    elif os.path.isdir(os.path.join(base, "md")) or holder.startswith("md"):
        labels = [sysfs.read_str(os.path.join(base, "md", "level")) or ""]
        kind = "md RAID"
    else:
        labels, kind = [], "holder"
    extra = ", ".join(label for label in labels if label)
    return f"{kind} /dev/{holder}" + (f" ({extra})" if extra else "")


class UsageSnapshot:
    """Mounts, swaps and open block devices, read once; ``uses`` answers per disk.

    ``exempt_self``: descriptors of this process are not uses (the caller
    holds them itself, e.g. the writer's fd or the re-read's own open).
    """

    def __init__(self, root: str = "/", *, exempt_self: bool = False) -> None:
        self.root = root
        self.mounts = _mounts(root)
        self.swaps = _swaps(root)
        self.root_devnos = root_devnos(root)
        self.opened: dict[int, list[tuple[int, str]]] = {}
        self.unreadable: list[int] = []     # processes whose descriptors we could not see
        self._scan_processes(os.getpid() if exempt_self else None)

    def _scan_processes(self, me: int | None) -> None:
        proc = sysfs.path(self.root, "/proc")
        for entry in sysfs.listdir(proc):
            if not entry.isdigit() or int(entry) == me:
                continue
            comm = sysfs.read_str(os.path.join(proc, entry, "comm")) or "?"
            if comm in UDEV_PROBERS:
                continue
            fd_dir = os.path.join(proc, entry, "fd")
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                # gone, or hidden from us (/proc/1/fd in a container); not ours to judge
                self.unreadable.append(int(entry))
                continue
            for fd in fds:
                try:
                    st = os.stat(os.path.join(fd_dir, fd))
                except OSError:
                    continue    # closed meanwhile, or a dangling link
                if stat.S_ISBLK(st.st_mode):
                    users = self.opened.setdefault(st.st_rdev, [])
                    if (int(entry), comm) not in users:
                        users.append((int(entry), comm))
        if self.unreadable:
            LOG.debug("open descriptors of %d process(es) are unreadable: %s",
                      len(self.unreadable), self.unreadable[:10])

    def uses_of(self, nodes: Iterable[Node]) -> list[Use]:
        """Every use of ``nodes``, node by node, each node's in KINDS order."""
        found: list[Use] = []
        for node in nodes:
            if node.devno in self.root_devnos:
                found.append(Use("root", node.device))
            points = self.mounts.get(node.devno, [])
            if points:
                shown = ", ".join(points[:_MAX_MOUNT_POINTS])
                more = len(points) - _MAX_MOUNT_POINTS
                found.append(Use("mounted", node.device,
                                 shown + (f" and {more} more" if more > 0 else "")))
            if node.devno in self.swaps:
                found.append(Use("swap", node.device))
            holders_dir = os.path.join(node.sysfs_dir, "holders")
            found += [Use("holder", node.device, _holder(holders_dir, h))
                      for h in sysfs.listdir(holders_dir)]
            found += [Use("open", node.device, f"process {pid} ({comm})")
                      for pid, comm in sorted(self.opened.get(node.devno, []))]
        return found

    def uses(self, disk: str) -> list[Use]:
        """Every use of ``disk`` (a /dev path or kernel name) and of its partitions."""
        return self.uses_of(family(disk, self.root))


def summary(uses: Iterable[Use]) -> str:
    """One operator line: the root filesystem first, then the rest in order found."""
    ordered = sorted(uses, key=lambda u: u.kind != "root")
    return "; ".join(u.describe() for u in ordered)
