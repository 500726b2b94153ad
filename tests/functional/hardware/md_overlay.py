"""Real loop devices seen through a sysfs tree that adds the md array this kernel cannot make.

This kernel has no md driver, so no array can run here.  What the erase
needs from an array is what sysfs says about it (which partitions it holds)
and the superblocks on its members.  So: real loop devices, real partitions
(BLKPG), real version-1 superblocks on the members (``md_superblock``, read
and zeroed by the real mdadm), and a sysfs tree that copies the loops'
attributes from the live /sys and adds md127 over the members, laid out as
the kernel would (tests/unit/hardware/fake_md.py).  /proc is the live one, so
mounts and open descriptors are checked for real.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from agent.disk import sysfs
from tests.unit.hardware.fake_md import add_md, class_link
from tests.unit.hardware.fake_sysfs import add_block, write
from tests.unit.hardware.raid import md_superblock

SET_UUID = uuid.UUID("6b1f7e2a-0c3d-4e5f-8a9b-1c2d3e4f5a6b")


def mirror_loop(root: Path, dev: str) -> Path:
    """Copy ``dev``'s sysfs directory (and its partitions) from the live /sys into ``root``."""
    kname = os.path.basename(dev)
    live = Path(sysfs.realpath(f"/sys/block/{kname}") or f"/sys/block/{kname}")
    real = add_block(root, kname, "virtual", devno=(live / "dev").read_text().strip(),
                     sectors=int((live / "size").read_text()))
    write(real / "ro", (live / "ro").read_text())
    (real / "holders").mkdir()
    class_link(root, real)
    for entry in sorted(live.iterdir()):
        if not (entry / "partition").exists():
            continue
        part = real / entry.name
        for name in ("partition", "start", "size", "dev", "ro"):
            write(part / name, (entry / name).read_text())
        (part / "holders").mkdir()
        class_link(root, part)
    return real


def superblock(member: str, dev_number: int, members: int, name: str = "any:root") -> None:
    """A real md 1.2 superblock for member ``dev_number`` of a ``members``-way RAID-1."""
    size = int(Path(f"/sys/class/block/{os.path.basename(member)}/size").read_text()) * 512
    md_superblock.write(member, size, level=1, raid_disks=members, dev_number=dev_number,
                        name=name, set_uuid=SET_UUID,
                        dev_uuid=uuid.UUID(int=0x1000 + dev_number))


def overlay(root: Path, loops: list[str], members: list[str], *, kname: str = "md127",
            names: tuple[str, ...] = ("root",)) -> Path:
    """The tree: every loop mirrored, ``kname`` over ``members``, /proc the live one."""
    for dev in loops:
        mirror_loop(root, dev)
    dirs = [Path(sysfs.realpath(str(root / "sys/class/block" / os.path.basename(m))) or "")
            for m in members]
    add_md(root, kname, dirs, names=names)
    os.symlink("/proc", root / "proc")
    return root
