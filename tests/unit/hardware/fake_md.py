"""Sysfs trees with md arrays, laid out the way the kernel lays them out.

This machine's kernel has no md driver, so the trees are built by hand from
what md.c and block/genhd.c create for an array ``md127`` over ``vda2`` and
``vdb2``:

    /sys/block/md127 -> ../devices/virtual/block/md127
    /sys/devices/virtual/block/md127/{dev,size,ro}
    .../md127/md/{level,array_state,metadata_version,raid_disks}
    .../md127/md/dev-vda2/{block -> <vda2's own directory>,state,slot}
    .../md127/slaves/vda2 -> <vda2's own directory>
    <vda's directory>/vda2/{partition,start,size,dev,holders/md127 -> <md127>}
    /sys/class/block/{vda,vda2,md127} -> their directories
    /dev/md/NAME -> ../md127          (mdadm or udev, named after the volume)

Every link is relative, as sysfs makes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.hardware.fake_sysfs import add_block, write

VIRTIO = "pci0000:00/0000:00:0{slot}.0/virtio{slot}"


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def class_link(root: Path, real: Path) -> None:
    _link(real, root / "sys/class/block" / real.name)


def add_virtio_disk(root: Path, name: str, slot: int, *, sectors: int = 41943040,
                    major: int = 252) -> Path:
    """A virtio disk (vda, vdb, ...) with its /sys/class/block link."""
    minor = 16 * (ord(name[-1]) - ord("a"))
    real = add_block(root, name, VIRTIO.format(slot=slot), devno=f"{major}:{minor}",
                     sectors=sectors, device_rel="../../../virtio" + str(slot))
    write(real / "serial", f"serial-{name}\n")
    class_link(root, real)
    return real


def add_partition(root: Path, disk: Path, number: int, *, start: int, sectors: int) -> Path:
    """Partition ``number`` of the disk at sysfs directory ``disk`` (vda -> vda2, nvme0n1p2)."""
    sep = "p" if disk.name[-1].isdigit() else ""
    name = f"{disk.name}{sep}{number}"
    major, minor = (int(x) for x in (disk / "dev").read_text().split(":"))
    real = disk / name
    write(real / "partition", f"{number}\n")
    write(real / "start", f"{start}\n")
    write(real / "size", f"{sectors}\n")
    write(real / "dev", f"{major}:{minor + number}\n")
    write(real / "ro", "0\n")
    (real / "holders").mkdir()
    class_link(root, real)
    return real


def add_md(root: Path, kname: str, members: list[Path], *, level: str = "raid1",
           state: str = "clean", metadata: str = "1.2", sectors: int | None = None,
           names: tuple[str, ...] = (), minor: int | None = None,
           member_state: str = "in_sync") -> Path:
    """An md array over ``members`` (sysfs directories of partitions or whole disks).

    ``names`` become /dev/md/NAME links; an inactive array has size 0 and, as the
    kernel shows it before the array runs, an empty level.
    """
    number = int(kname[2:]) if minor is None else minor
    inactive = state == "inactive"
    if sectors is None:
        sectors = 0 if inactive else int((members[0] / "size").read_text())
    real = add_block(root, kname, "virtual", devno=f"9:{number}", sectors=sectors)
    md = real / "md"
    write(md / "level", ("" if inactive else level) + "\n")
    write(md / "array_state", state + "\n")
    write(md / "metadata_version", metadata + "\n")
    write(md / "raid_disks", f"{len(members)}\n")
    (real / "slaves").mkdir()
    (real / "holders").mkdir()
    for slot, member in enumerate(members):
        entry = md / f"dev-{member.name}"
        _link(member, entry / "block")
        write(entry / "state", ("spare" if inactive else member_state) + "\n")
        write(entry / "slot", ("none" if inactive else str(slot)) + "\n")
        _link(member, real / "slaves" / member.name)
        _link(real, member / "holders" / kname)
    class_link(root, real)
    for name in names:
        (root / "dev/md").mkdir(parents=True, exist_ok=True)
        os.symlink(f"../{kname}", root / "dev/md" / name)
    return real


def mirror_tree(root: Path, *, names: tuple[str, ...] = ("root",)) -> dict[str, Path]:
    """vda and vdb, each with an ESP-sized vda1 and a vda2 holder; md127 over vda2+vdb2."""
    found: dict[str, Path] = {}
    for slot, disk in ((4, "vda"), (5, "vdb")):
        found[disk] = add_virtio_disk(root, disk, slot)
        found[f"{disk}1"] = add_partition(root, found[disk], 1, start=2048, sectors=1126400)
        found[f"{disk}2"] = add_partition(root, found[disk], 2, start=1128448,
                                          sectors=20971520)
    found["md127"] = add_md(root, "md127", [found["vda2"], found["vdb2"]], names=names,
                            sectors=20967424)
    return found
