"""UEFI boot from a software RAID install disk: a mirrored ESP on every member disk.

The image's own ESP lies inside the array, where firmware cannot read it.  So
every member disk gets an ESP of its own in the boot room the RAID step left
free, the ESPs are mirrored as md RAID-1 with metadata 1.0 (superblock at the
end, so firmware reads each member as a plain FAT filesystem), the mirror is
formatted and filled with a copy of the image's ESP, and one NVRAM entry per
member points at that member's ESP (label suffix `` (RAID, part<i>)``).

Files move with mtools (``mcopy -s``) in both directions: no vfat mount is
needed, and nothing from the image runs.  ``create_mirror`` is the seam tests
replace: this host's kernel has no md driver.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time

from agent import tools
from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import CommandExecutionError, InvalidImage
from agent.hardware.raid import arrays, mdadm
from agent.imaging.bootloader import devices, efibootmgr, loaders, raid, uefi
from agent.imaging.partition_image import ESP_LABEL, ESP_MB

LOG = logging.getLogger(__name__)

ESP_CODE = "EF00"
ESP_NAME = "efi-part"
MIRROR_NAME = "esp"
MIN_ESP_MB = 64              # mkfs.vfat -F 32 needs about 33 MiB; leave room for loaders
LABEL_SUFFIX = " (RAID, part{})"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
NODE_WAIT = 10.0


@dataclasses.dataclass(frozen=True)
class MemberEsp:
    disk: str
    number: int
    node: str
    created: bool


@dataclasses.dataclass
class UefiRaidOutcome:
    source: str                          # the image's ESP inside the array
    mirror: str                          # the md device mirroring the member ESPs
    members: list[MemberEsp]
    loaders: list[loaders.Loader]
    entries: list[efibootmgr.BootEntry]
    fallback_missing: str | None


def prepare_member(disk: str) -> MemberEsp:
    """The ESP partition in ``disk``'s boot room: the existing one, or a new one."""
    room = raid.boot_room(disk)
    table = room.table
    if table.kind != "gpt":
        raise CommandExecutionError(
            f"the RAID member {disk} has an MBR partition table; UEFI boot from software "
            "RAID needs GPT members (create the arrays with the RAID step in UEFI mode)")
    per_mib = raid.MiB // table.sector_size
    for part in table.partitions:
        # an earlier deploy's member ESP: holder partitions never have this type
        if part.type_guid == pt.ESP_GUID and part.size_bytes >= MIN_ESP_MB * raid.MiB:
            node = reread.partition_device(disk, part.number)
            if not os.path.exists(node):
                node = reread.reread(disk, table=table).partitions[part.number]
            return MemberEsp(disk, part.number, node, created=False)
    first = room.aligned_start()
    last = min(room.end_lba, first + ESP_MB * per_mib) - 1
    if last - first + 1 < MIN_ESP_MB * per_mib:
        raise CommandExecutionError(
            f"the RAID member {disk} has no room for an EFI system partition: "
            f"{room.sectors * table.sector_size // raid.MiB} MiB free before its first "
            f"partition, at least {MIN_ESP_MB} MiB needed; create the arrays with the RAID "
            "step in UEFI mode, which leaves that room")
    number = raid.free_number(table)
    node = raid.add_partition(room, number, first, last, ESP_CODE, ESP_NAME)
    return MemberEsp(disk, number, node, created=True)


def release(partitions: list[str]) -> None:
    """Stop arrays using ``partitions`` (an ESP mirror from an earlier deploy) and forget them."""
    wanted = {os.path.realpath(p) for p in partitions} | set(partitions)
    old = [a for a in raid.list_arrays() if wanted.intersection(a.members)]
    for array in old:
        LOG.info("reusing the ESPs of %s: stopping it first", array.describe())
    if old:
        arrays.stop_and_forget(old)


def create_mirror(partitions: list[str], name: str) -> str:
    """md RAID-1 over ``partitions`` with the superblock at the end; the md device."""
    taken = {a.kname for a in raid.list_arrays()}
    number = next(n for n in range(0, 1 << 20) if f"md{n}" not in taken)
    device = f"/dev/md{number}"
    tools.run(mdadm.TOOL, *mdadm.create(device, "1", partitions, name=name, metadata="1.0"),
              env=mdadm.ENV, timeout=120.0)
    deadline = time.monotonic() + NODE_WAIT
    while not os.path.exists(device):
        if time.monotonic() > deadline:
            raise CommandExecutionError(f"mdadm created the ESP mirror {device}, but no "
                                        "device node appeared")
        time.sleep(0.05)   # devtmpfs or mdadm itself makes the node; nothing to wait on
    return device


def extract(source: str, tree: str) -> None:
    """Copy every file of the FAT filesystem on ``source`` into the directory ``tree``."""
    tools.run("mcopy", "-s", "-n", "-p", "-m", "-i", source, "::/", tree, env=MTOOLS_ENV,
              timeout=300.0)


def fill(target: str, tree: str) -> None:
    """mkfs.vfat ``target`` and copy ``tree`` into it; verify every file arrived."""
    tools.run("wipefs", "--all", "--quiet", target)
    tools.run("mkfs.vfat", "-F", "32", "-n", ESP_LABEL, target)
    entries = sorted(os.listdir(tree))
    if entries:
        tools.run("mcopy", "-s", "-p", "-m", "-i", target,
                  *[os.path.join(tree, e) for e in entries], "::/", env=MTOOLS_ENV,
                  timeout=300.0)
    listing = tools.run("mdir", "-/", "-b", "-i", target, "::/", env=MTOOLS_ENV,
                        check=False, timeout=120.0).stdout
    have = {line.strip().lower().removeprefix("::/").rstrip("/")
            for line in listing.splitlines() if line.strip()}
    want = {os.path.relpath(os.path.join(d, f), tree).lower()
            for d, _, files in os.walk(tree) for f in files}
    missing = sorted(want - have)
    if missing:
        raise CommandExecutionError(f"the ESP copy on {target} lacks {', '.join(missing[:5])}"
                                    + (f" and {len(missing) - 5} more" if len(missing) > 5
                                       else ""))


def register(members: list[MemberEsp], found: list[loaders.Loader]
             ) -> list[efibootmgr.BootEntry]:
    """One NVRAM entry per loader and member, the first member's first in BootOrder."""
    entries: list[efibootmgr.BootEntry] = []
    # efibootmgr puts each new entry first: register the last member first
    for index in reversed(range(len(members))):
        member = members[index]
        labelled = [loaders.Loader(x.path, x.label + LABEL_SUFFIX.format(index), x.origin)
                    for x in found]
        entries = efibootmgr.register(member.disk, member.number, labelled) + entries
    return entries


def install(md_device: str, members: list[str], efi_system_part_uuid: str | None, *,
            arch: str) -> UefiRaidOutcome:
    """Mirror the image's ESP onto every member disk and register each in NVRAM."""
    loaders.suffix_for(arch)   # an unsupported architecture fails before anything changes
    source = uefi.find_esp(devices.DiskView(md_device), efi_system_part_uuid)
    with tempfile.TemporaryDirectory(prefix="deploy-agent-esp-") as tree:
        extract(source.node, tree)
        scan = loaders.scan(tree, arch)
        if not scan.loaders:
            raise InvalidImage(
                f"the image's EFI system partition {source.node} holds no boot loader for "
                f"{arch}{' (' + '; '.join(scan.problems) + ')' if scan.problems else ''}; "
                "it cannot boot in UEFI mode")
        # every member is checked before any is changed
        esps = [prepare_member(disk) for disk in members]
        release([e.node for e in esps])
        mirror = create_mirror([e.node for e in esps], MIRROR_NAME)
        LOG.info("ESP mirror %s over %s", mirror, ", ".join(e.node for e in esps))
        fill(mirror, tree)
    raid.sync_device(mirror)
    entries: list[efibootmgr.BootEntry] = []
    if uefi.nvram_available():
        entries = register(esps, scan.loaders)
    else:
        LOG.warning("no NVRAM boot entries can be created (%s); the firmware must find %s on "
                    "a member's ESP by itself",
                    "no efibootmgr" if uefi.efi_booted() else "the ramdisk booted in BIOS mode",
                    scan.fallback or scan.expected_fallback)
    if scan.fallback is None:
        LOG.warning("the removable-media fallback %s is missing from the image's ESP: the "
                    "node boots only through NVRAM entries", scan.expected_fallback)
    return UefiRaidOutcome(source.node, mirror, esps, scan.loaders, entries,
                           None if scan.fallback else scan.expected_fallback)
