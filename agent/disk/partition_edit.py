"""Partition table changes, behind one wrapper: sfdisk edits GPTs and MBRs and writes
whole new layouts of either kind.

Not sgdisk: after writing a table it calls sync() for every filesystem and
then sleeps a full second before its own re-read, on every call; sfdisk with
``--no-reread`` writes the same GPT bytes, fsyncs the device and returns in
milliseconds (the re-read is ours, below).

Every change is followed by a read-back with our own reader and a check that
the table now says exactly what we asked for; a tool that exits 0 but wrote
something else is an error.  Nothing here tells the kernel: the caller runs
``reread.reread`` afterwards, which knows how to do that deterministically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Iterator

from agent import tools
from agent.disk import partition_table as pt
from agent.errors import DeploymentError

MiB = 1024 * 1024
DISK_SIGNATURE_OFFSET = 440
_SFDISK_QUIET = ("--no-reread", "--no-tell-kernel", "--quiet")


@dataclasses.dataclass(frozen=True)
class PartSpec:
    """One partition of a new layout; ``size_bytes == 0`` means 'the rest of the disk'."""

    key: str
    size_bytes: int
    type_guid: str = pt.LINUX_FS_GUID
    mbr_type: int = pt.MBR_LINUX
    name: str = ""
    bootable: bool = False


@contextlib.contextmanager
def _keep_disk_signature(device: str) -> Iterator[None]:
    """Table tools may rewrite the protective MBR with a zero disk signature.

    sgdisk does; libfdisk keeps it today.  For whole-disk images those 4 bytes
    are the ``root uuid`` the conductor records (reference §5.6), so they must
    survive table edits whichever tool or version made them.
    """
    with open(device, "rb") as f:
        f.seek(DISK_SIGNATURE_OFFSET)
        before = f.read(4)
    yield
    with open(device, "r+b") as f:
        f.seek(DISK_SIGNATURE_OFFSET)
        if f.read(4) != before:
            f.seek(DISK_SIGNATURE_OFFSET)
            f.write(before)
            f.flush()
            os.fsync(f.fileno())


def relocate_backup(device: str) -> pt.PartitionTable:
    """Move the GPT backup header and array to the end of the disk.

    Also widens the usable area and the protective MBR to the whole disk; a
    hybrid MBR is left alone.
    """
    table = _require(device, "gpt")
    if table.ok:
        return table
    if not table.primary_ok:
        raise DeploymentError(f"refusing to relocate the GPT of {device}: its primary copy "
                              f"is damaged ({'; '.join(table.problems)})")
    with _keep_disk_signature(device):
        tools.run("sfdisk", *_SFDISK_QUIET, "--relocate", "gpt-bak-std", device)
    after = pt.read_table(device)
    if after.kind != "gpt" or not after.ok:
        raise DeploymentError(f"moving the backup GPT of {device} to the end of the disk "
                              f"did not produce a valid table: {'; '.join(after.problems)}")
    if _layout(after) != _layout(table):
        raise DeploymentError(f"moving the backup GPT of {device} changed its partitions")
    return after


def add_partition_at_end(device: str, size_bytes: int, *, name: str = "",
                         type_guid: str = pt.LINUX_FS_GUID, mbr_type: int = pt.MBR_LINUX
                         ) -> pt.Partition:
    """Add a partition of ``size_bytes`` ending at the end of the usable disk.

    GPT: the backup header is relocated first if needed; the partition gets
    ``name``, ``type_guid`` and a fresh random unique GUID (returned in the
    Partition).  MBR: a primary partition that ends below the 2 TiB MBR limit.
    """
    table = pt.read_table(device)
    if table.kind == "gpt":
        return _add_gpt(device, table, size_bytes, name, type_guid)
    if table.kind == "mbr":
        return _add_mbr(device, table, size_bytes, mbr_type)
    raise DeploymentError(f"{device} has no partition table; cannot add a partition "
                          f"({'; '.join(table.problems) or 'no MBR or GPT found'})")


def write_layout(device: str, label: str, specs: list[PartSpec]) -> dict[str, pt.Partition]:
    """Replace the partition table with ``specs`` in order, 1 MiB aligned.

    ``label`` is 'gpt' or 'msdos'.  On MBR, more than four partitions puts the
    fourth and later ones into an extended partition as logical partitions.
    Returns the new partition for every spec key.
    """
    if label not in ("gpt", "msdos"):
        raise DeploymentError(f"unsupported disk label {label!r}; expected 'gpt' or 'msdos'")
    if not specs or any(s.size_bytes == 0 for s in specs[:-1]):
        raise DeploymentError("a layout needs partitions, and only the last may fill the disk")
    if any(s.size_bytes % MiB or s.size_bytes < 0 for s in specs):
        raise DeploymentError("partition sizes must be whole MiB")
    before = pt.read_table(device)
    build = _gpt_layout_script if label == "gpt" else _mbr_layout_script
    script = build(device, specs, before.sector_size, before.disk_size)
    # sfdisk wipes the old table of either kind, both GPT copies included
    tools.run("sfdisk", *_SFDISK_QUIET, device, input=script)
    return _verify_layout(device, label, specs)


def check_fits(device: str, label: str, specs: list[PartSpec]) -> None:
    """Raise what ``write_layout`` would, without writing: before the network is used."""
    table = pt.read_table(device)
    build = _gpt_layout_script if label == "gpt" else _mbr_layout_script
    build(device, specs, table.sector_size, table.disk_size)


# --- helpers -----------------------------------------------------------------------------

def _require(device: str, kind: str) -> pt.PartitionTable:
    table = pt.read_table(device)
    if table.kind != kind:
        raise DeploymentError(f"{device} has a {table.kind or 'missing'} partition table, "
                              f"expected {kind}")
    return table


def _layout(table: pt.PartitionTable) -> list[tuple]:
    return [(p.number, p.first_lba, p.last_lba, p.type_guid, p.unique_guid, p.name)
            for p in table.partitions]


def _align_down(value: int, align: int) -> int:
    return value - value % align


def _end_slot(table: pt.PartitionTable, size_bytes: int, limit_lba: int) -> tuple[int, int]:
    """(first, last) LBA of a ``size_bytes`` partition ending at ``limit_lba``."""
    ss = table.sector_size
    if size_bytes <= 0 or size_bytes % ss:
        raise DeploymentError(f"partition size {size_bytes} is not a positive multiple "
                              f"of the {ss}-byte sector size")
    first = _align_down(limit_lba + 1 - size_bytes // ss, MiB // ss)
    used_end = max((p.last_lba for p in table.partitions), default=0)
    floor = max(used_end + 1, table.first_usable_lba or MiB // ss)
    if first < floor:
        raise DeploymentError(
            f"not enough free space at the end of the disk for a {size_bytes // MiB} MiB "
            f"partition: the last partition ends at LBA {used_end}, the usable area ends "
            f"at LBA {limit_lba}")
    return first, limit_lba


def _add_gpt(device: str, table: pt.PartitionTable, size_bytes: int, name: str,
             type_guid: str) -> pt.Partition:
    if not table.primary_ok:
        raise DeploymentError(f"refusing to edit the GPT on {device}: its primary copy is "
                              f"damaged ({'; '.join(table.problems)})")
    # judged before anything is written, the backup relocation included
    fields = f'type={_guid(type_guid)}, name="{_gpt_name(name)}"'
    if not table.ok:
        table = relocate_backup(device)
    first, last = _end_slot(table, size_bytes, table.last_usable_lba or table.last_lba)
    used = {p.number for p in table.partitions}
    number = next((n for n in range(1, 129) if n not in used), None)
    if number is None:
        raise DeploymentError(f"all 128 GPT entries of {device} are in use")
    guid = str(uuid.uuid4())
    script = f"start={first}, size={last - first + 1}, {fields}, uuid={guid}\n"
    with _keep_disk_signature(device):
        tools.run("sfdisk", *_SFDISK_QUIET, "-N", number, device, input=script)
    return _verify_added(device, table, number, first, last,
                         dict(type_guid=type_guid, unique_guid=guid, name=name))


def _guid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise DeploymentError("a partition type must be a GUID") from None


def _gpt_name(name: str) -> str:
    # goes into an sfdisk script inside double quotes; GPT names hold 36 UTF-16 units
    if len(name.encode("utf-16-le")) > 72 or any(c in '"\\' or not c.isprintable()
                                                  for c in name):
        raise DeploymentError("a GPT partition name must be at most 36 printable characters "
                              "without quotes or backslashes")
    return name


def _add_mbr(device: str, table: pt.PartitionTable, size_bytes: int,
             mbr_type: int) -> pt.Partition:
    if table.primary_count >= 4:
        raise DeploymentError(
            f"{device} already has four primary partitions; a config drive partition "
            f"cannot be added (logical partitions are not supported for it)")
    limit = min(table.last_lba, pt.MBR_MAX_SECTORS - 1)
    first, last = _end_slot(table, size_bytes, limit)
    used = {p.number for p in table.partitions}
    number = next(n for n in range(1, 5) if n not in used)
    script = f"start={first}, size={last - first + 1}, type={mbr_type:x}\n"
    tools.run("sfdisk", *_SFDISK_QUIET, "-N", number, device, input=script)
    return _verify_added(device, table, number, first, last, dict(mbr_type=mbr_type))


def _verify_added(device: str, before: pt.PartitionTable, number: int, first: int, last: int,
                  want: dict) -> pt.Partition:
    after = pt.read_table(device)
    part = after.get(number)
    problems = list(after.problems)
    if part is None:
        problems.append(f"partition {number} is missing")
    elif (part.first_lba, part.last_lba) != (first, last):
        problems.append(f"partition {number} spans LBA {part.first_lba}-{part.last_lba}, "
                        f"expected {first}-{last}")
    elif any(getattr(part, k) != v for k, v in want.items()):
        problems.append(f"partition {number} has unexpected attributes {part}")
    if [p for p in after.partitions if p.number != number] != before.partitions:
        problems.append("existing partitions changed")
    if problems or part is None:
        raise DeploymentError(f"adding partition {number} to {device} failed verification: "
                              f"{'; '.join(problems)}")
    return part


def _too_small(device: str, need: int, have: int, what: str = "") -> DeploymentError:
    return DeploymentError(f"the layout needs {-(-need // MiB)} MiB but {device} has only "
                           f"{have // MiB} MiB{what}")


def _gpt_layout_script(device: str, specs: list[PartSpec], ss: int, disk_size: int) -> str:
    lines = ["label: gpt", "unit: sectors"]
    cursor = MiB // ss
    for spec in specs:
        fields = [f"start={cursor}"]
        if spec.size_bytes:
            fields.append(f"size={spec.size_bytes // ss}")
        fields += [f"type={spec.type_guid}", f'name="{spec.name or spec.key}"']
        if spec.bootable:
            fields.append('attrs="LegacyBIOSBootable"')
        lines.append(", ".join(fields))
        cursor += spec.size_bytes // ss
    # the backup GPT takes a 16 KiB entry array plus its header at the end
    usable = disk_size - 16384 - ss
    need = cursor * ss + (MiB if not specs[-1].size_bytes else 0)
    if need > usable:
        raise _too_small(device, need, usable)
    return "\n".join(lines) + "\n"


def _mbr_layout_script(device: str, specs: list[PartSpec], ss: int, disk_size: int) -> str:
    limit = min(disk_size // ss, pt.MBR_MAX_SECTORS)
    primaries, logicals = (specs, []) if len(specs) <= 4 else (specs[:3], specs[3:])
    lines = ["label: dos", "unit: sectors"]
    cursor = MiB // ss

    def line(spec: PartSpec, start: int | None, size: int) -> str:
        fields = ([f"start={start}"] if start is not None else []) + [f"size={size}"]
        fields.append(f"type={spec.mbr_type:x}")
        return ", ".join(fields + (["bootable"] if spec.bootable else []))

    gap = MiB // ss
    for spec in primaries:
        size = spec.size_bytes // ss or limit - cursor
        lines.append(line(spec, cursor, size))
        cursor += size
    if logicals:
        # sfdisk puts each logical partition one MiB after its EBR
        sizes = [s.size_bytes // ss for s in logicals]
        if sizes[-1]:
            ext_size = sum(sizes) + gap * len(sizes)
        else:
            ext_size = limit - cursor
            sizes[-1] = ext_size - sum(sizes[:-1]) - gap * len(sizes)
        lines.append(f"start={cursor}, size={ext_size}, type=5")
        lines += [line(spec, None, size) for spec, size in zip(logicals, sizes, strict=True)]
        cursor += ext_size
        fill = sizes[-1]
    else:
        fill = size
    if cursor > limit or fill < gap:
        raise _too_small(device, cursor * ss + (0 if specs[-1].size_bytes else MiB),
                         limit * ss, " addressable by MBR")
    return "\n".join(lines) + "\n"


def _verify_layout(device: str, label: str, specs: list[PartSpec]) -> dict[str, pt.Partition]:
    table = pt.read_table(device)
    kind = "gpt" if label == "gpt" else "mbr"
    parts = [p for p in table.partitions if p.mbr_role != "extended"]
    problems = list(table.problems)
    if table.kind != kind:
        problems.append(f"table kind is {table.kind}, expected {kind}")
    if len(parts) != len(specs):
        problems.append(f"{len(parts)} partitions found, expected {len(specs)}")
    result = {}
    for spec, part in zip(specs, parts, strict=False):
        if spec.size_bytes and part.size_bytes != spec.size_bytes:
            problems.append(f"{spec.key} partition is {part.size_bytes} bytes, "
                            f"expected {spec.size_bytes}")
        if kind == "gpt" and (part.type_guid, part.name) != (spec.type_guid,
                                                              spec.name or spec.key):
            problems.append(f"{spec.key} partition has type {part.type_guid} and name "
                            f"{part.name!r}")
        if part.bootable != spec.bootable:
            problems.append(f"{spec.key} partition has the boot flag "
                            f"{'set' if part.bootable else 'clear'}")
        if kind == "mbr" and part.mbr_type != spec.mbr_type:
            problems.append(f"{spec.key} partition has type 0x{part.mbr_type:02x}")
        result[spec.key] = part
    if problems:
        raise DeploymentError(f"the new partition table on {device} failed verification: "
                              f"{'; '.join(problems)}")
    return result
