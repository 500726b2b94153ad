"""The md arrays this machine has running: discovery from sysfs, and stop/zero/assemble.

Discovery reads only sysfs (``/sys/block/md*/md``) and the ``/dev/md/NAME``
links mdadm or udev leave, so it works in a ramdisk without udev and in tests
pointed at a fake tree through ``root``.  The volume name comes from those
links; ``mdadm --detail`` is asked only when no link names an array.

The operations are the three every RAID-aware caller needs: stop arrays
(before their members are repartitioned or erased), zero the superblock on
former members (so nothing re-assembles them at the next boot), and assemble
whatever superblocks say exists (at agent start, so an array built during
cleaning is there for the deploy after a reboot).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence

from agent import tools
from agent.disk import sysfs
from agent.errors import ToolError, ToolMissing
from agent.hardware.raid import mdadm

LOG = logging.getLogger(__name__)

# mdadm --assemble --scan exits 1 and says so when there is nothing to assemble;
# 2 is "some arrays could not be assembled" (partial success, reported)
_NOTHING_TO_ASSEMBLE = "No arrays found"
ASSEMBLE_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class MdArray:
    kname: str                       # md127
    level: str | None                # schema spelling ("1", "1+0", ...), None if unknown
    state: str | None                # sysfs array_state: clean, active, inactive, ...
    members: tuple[str, ...]         # /dev nodes of the components (usually partitions)
    member_disks: tuple[str, ...]    # /dev nodes of the whole disks holding them
    size: int                        # bytes the array offers (0 while inactive)
    volume_name: str | None = None   # the name given at creation (no homehost prefix)
    metadata: str | None = None      # superblock version, e.g. "1.2"
    links: tuple[str, ...] = ()      # /dev/md/NAME links naming this array
    devno: tuple[int, int] | None = None
    sysfs_dir: str = ""              # /sys/block/mdN (under the root it was read from)

    @property
    def device(self) -> str:
        return f"/dev/{self.kname}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every /dev path the array answers to: /dev/mdN and its /dev/md/NAME links."""
        return (self.device, *self.links)

    def describe(self) -> str:
        """One operator line: device, name, level, state and members."""
        name = f" ({self.volume_name})" if self.volume_name else ""
        level = f"RAID-{self.level}" if self.level else "level unknown"
        return (f"{self.device}{name}, {level}, {self.state or 'state unknown'}, members "
                f"{', '.join(self.members) or 'none'}")


def available() -> bool:
    """True when the kernel has md (the driver is loaded or built in)."""
    return os.path.exists("/proc/mdstat")


def ensure_driver() -> bool:
    """Load md when it is a module nobody loaded yet; True when the kernel has md then.

    udev's mdadm rules load it as soon as a member appears, but a machine with
    blank disks has none, and ``mdadm --create`` must not be the first to find out.
    """
    if available():
        return True
    if tools.which("modprobe") is not None:
        proc = tools.run("modprobe", "md_mod", check=False, timeout=30)
        if proc.returncode:
            LOG.info("the md driver could not be loaded: %s", tools.tail(proc.stderr))
    return available()


def _parent_disk(root: str, md_dir: str, entry: str, kname: str) -> str:
    """Whole disk holding member ``kname``; a whole disk is its own parent."""
    # dev-X/block links to the member's own sysfs directory; a partition's parent
    # directory is its disk.  /sys/class/block is the fallback for a dangling link.
    for link in (os.path.join(md_dir, entry, "block"),
                 sysfs.path(root, "/sys/class/block", kname)):
        node = sysfs.realpath(link)
        if node and os.path.isdir(node):
            if os.path.exists(os.path.join(node, "partition")):
                return os.path.basename(os.path.dirname(node))
            return kname
    return kname


def _members(root: str, md_dir: str) -> list[tuple[str, str]]:
    """(kernel name, whole disk) of every component, in natural order."""
    found = []
    for entry in sysfs.listdir(md_dir):
        if not entry.startswith("dev-"):
            continue
        target = sysfs.link_name(os.path.join(md_dir, entry, "block"))
        kname = target or entry[len("dev-"):]
        found.append((kname, _parent_disk(root, md_dir, entry, kname)))
    return sorted(found, key=lambda m: sysfs.natural_key(m[0]))


def _strip_host(name: str) -> str:
    # "homehost:name" is how a name made elsewhere shows (/dev/md/otherhost:root)
    return name.split(":", 1)[1] if ":" in name else name


def _links(root: str) -> dict[str, list[str]]:
    """kname -> the /dev/md/NAME links (udev's or mdadm's own) pointing at it."""
    found: dict[str, list[str]] = {}
    link_dir = sysfs.path(root, "/dev/md")
    for entry in sysfs.listdir(link_dir):
        target = sysfs.link_name(os.path.join(link_dir, entry))
        if target and target.startswith("md") and entry != target:
            found.setdefault(target, []).append(entry)
    return found


def _name_from_links(entries: Sequence[str]) -> str | None:
    # a bare name beats "host:name"; mdadm adds "_0" only when two arrays clash,
    # and then the bare link names the other one
    for entry in entries:
        if ":" not in entry:
            return entry
    return _strip_host(entries[0]) if entries else None


def _udev_name(root: str, devno: tuple[int, int] | None) -> str | None:
    """MD_DEVNAME / MD_NAME from the udev database, when udev runs."""
    if devno is None:
        return None
    text = sysfs.read_str(sysfs.path(root, f"/run/udev/data/b{devno[0]}:{devno[1]}")) or ""
    props = dict(line[2:].split("=", 1) for line in text.splitlines()
                 if line.startswith("E:") and "=" in line)
    name = props.get("MD_DEVNAME") or props.get("MD_NAME")
    return _strip_host(name) if name else None


def _detail_name(device: str) -> str | None:
    try:
        proc = tools.run(mdadm.TOOL, *mdadm.detail(device), env=mdadm.ENV, timeout=30)
    except (ToolError, ToolMissing):
        return None
    name = mdadm.parse_detail(proc.stdout).get("volume_name")
    return name if isinstance(name, str) and name else None


def _devno(sys_dir: str) -> tuple[int, int] | None:
    text = sysfs.read_str(os.path.join(sys_dir, "dev")) or ""
    major, _, minor = text.partition(":")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def list_arrays(root: str = "/", *, ask_mdadm: bool = True) -> list[MdArray]:
    """Every md array the kernel knows, in natural name order.

    Inactive arrays (assembled but not started) are included: they hold their
    members as firmly as running ones, and have no size.
    """
    links = _links(root)
    arrays = []
    for kname in sysfs.listdir(sysfs.path(root, "/sys/block")):
        sys_dir = sysfs.path(root, "/sys/block", kname)
        md_dir = os.path.join(sys_dir, "md")
        if not kname.startswith("md") or not os.path.isdir(md_dir):
            continue
        members = _members(root, md_dir)
        level_text = sysfs.read_str(os.path.join(md_dir, "level"))
        sectors = sysfs.read_int(os.path.join(sys_dir, "size")) or 0
        disks = dict.fromkeys(disk for _, disk in members)
        devno = _devno(sys_dir)
        own = links.get(kname, [])
        name = _name_from_links(own) or _udev_name(root, devno)
        if name is None and ask_mdadm and root == "/":
            name = _detail_name(f"/dev/{kname}")
        arrays.append(MdArray(
            kname=kname, level=mdadm.SCHEMA_LEVEL.get(level_text or ""),
            state=sysfs.read_str(os.path.join(md_dir, "array_state")),
            members=tuple(f"/dev/{m}" for m, _ in members),
            member_disks=tuple(f"/dev/{d}" for d in disks),
            size=sectors * 512, volume_name=name,
            metadata=sysfs.read_str(os.path.join(md_dir, "metadata_version")),
            links=tuple(f"/dev/md/{e}" for e in own), devno=devno, sysfs_dir=sys_dir))
    return sorted(arrays, key=lambda a: sysfs.natural_key(a.kname))


def on_disks(arrays: Iterable[MdArray], disks: Iterable[str]) -> list[MdArray]:
    """The arrays with at least one member on any of ``disks`` (/dev names)."""
    wanted = set(disks)
    return [a for a in arrays if wanted.intersection(a.member_disks)]


def stop(array: MdArray) -> None:
    """Stop one array; its members become plain partitions again."""
    LOG.info("stopping md array %s (%s, members %s)", array.device,
             array.volume_name or "unnamed", ", ".join(array.members))
    tools.run(mdadm.TOOL, *mdadm.stop(array.device), env=mdadm.ENV, timeout=STOP_TIMEOUT)


def zero_superblocks(devices: Sequence[str]) -> list[str]:
    """Zero the md superblock on each device; returns the ones that had one."""
    zeroed = []
    for device in devices:
        proc = tools.run(mdadm.TOOL, *mdadm.zero_superblock(device), env=mdadm.ENV,
                         timeout=STOP_TIMEOUT, check=False)
        if proc.returncode == 0:
            zeroed.append(device)
            continue
        text = f"{proc.stderr}\n{proc.stdout}"
        # no superblock there: nothing to do (mdadm says "Unrecognised md component")
        if "Unrecognised md component" in text or mdadm.no_superblock(text):
            continue
        raise ToolError(f"mdadm could not zero the md superblock on {device}: "
                        f"{tools.tail(text)}", tool=mdadm.TOOL, returncode=proc.returncode,
                        stderr=tools.tail(text))
    if zeroed:
        LOG.info("zeroed md superblocks on %s", ", ".join(zeroed))
    return zeroed


def stop_and_forget(arrays: Sequence[MdArray]) -> list[str]:
    """Stop ``arrays`` and zero their members' superblocks; returns the members."""
    members: list[str] = []
    for array in arrays:
        stop(array)
        members.extend(array.members)
    zero_superblocks(members)
    return members


def assemble_all() -> list[MdArray]:
    """Assemble every array the superblocks describe; the arrays running afterwards.

    Never raises for "nothing to assemble" or a missing mdadm/md driver: an agent
    on a machine without arrays must start as usual.  Callers run it in a ramdisk
    only: on a workstation it would assemble whatever the host's disks describe.
    """
    if tools.which(mdadm.TOOL) is None:
        LOG.debug("not assembling md arrays: no mdadm")
        return []
    if not ensure_driver():
        LOG.info("not assembling md arrays: this kernel has no md driver")
        return []
    proc = tools.run(mdadm.TOOL, *mdadm.assemble_scan(), "--run", env=mdadm.ENV,
                     timeout=ASSEMBLE_TIMEOUT, check=False)
    text = f"{proc.stderr}\n{proc.stdout}".strip()
    if proc.returncode and _NOTHING_TO_ASSEMBLE not in text:
        LOG.warning("mdadm --assemble --scan exited %d: %s", proc.returncode, tools.tail(text))
    arrays = list_arrays()
    for array in arrays:
        LOG.info("md array %s (%s, level %s, %s): members %s", array.device,
                 array.volume_name or "unnamed", array.level, array.state,
                 ", ".join(array.members))
    return arrays
