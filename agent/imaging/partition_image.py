"""The disk layout for partition images (``image_type: partition``).

Order, as ironic lays it out: boot partitions first (ESP for UEFI, BIOS boot
for BIOS on GPT, PReP on ppc64), then ephemeral, swap and config drive, and
root last so it can grow.  We create the table, make the kernel see it, and
format the auxiliary partitions; the root image is streamed in by the caller.
"""

from __future__ import annotations

from typing import Any

from agent import tools
from agent.disk import partition_edit, reread
from agent.disk import partition_table as pt
from agent.disk.partition_edit import MiB, PartSpec
from agent.errors import DeploymentError, InvalidCommandParamsError

ROOT = "root"
ESP = "efi system partition"
BIOS_BOOT = "BIOS Boot partition"
PREP = "PReP Boot partition"
SWAP = "swap"
EPHEMERAL = "ephemeral"
CONFIGDRIVE = "configdrive"

ESP_MB = 550
BIOS_BOOT_MB = 1
PREP_MB = 8
MAX_CONFIGDRIVE = 64 * MiB
EPHEMERAL_FORMATS = ("ext4", "ext3", "ext2", "xfs", "vfat")
EPHEMERAL_LABEL = "ephemeral0"
SWAP_LABEL = "swap1"
ESP_LABEL = "EFI-PART"


def plan_layout(*, root_mb: int, swap_mb: int = 0, ephemeral_mb: int = 0,
                boot_mode: str = "bios", disk_label: str | None = None,
                cpu_arch: str | None = None, configdrive_size: int = 0
                ) -> tuple[str, list[PartSpec]]:
    """Validate the parameters and return (disk label, partitions in order)."""
    for name, value in (("root_mb", root_mb), ("swap_mb", swap_mb),
                        ("ephemeral_mb", ephemeral_mb), ("configdrive_size", configdrive_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidCommandParamsError(f"{name} must be a non-negative integer, "
                                            f"got {value!r}")
    if boot_mode not in ("bios", "uefi"):
        raise InvalidCommandParamsError(f"deploy_boot_mode must be 'bios' or 'uefi', "
                                        f"got {boot_mode!r}")
    label = disk_label or ("gpt" if boot_mode == "uefi" else "msdos")
    if label not in ("gpt", "msdos"):
        raise InvalidCommandParamsError(f"disk_label must be 'gpt' or 'msdos', got {label!r}")
    if configdrive_size > MAX_CONFIGDRIVE:
        raise DeploymentError("Config drive size exceeds maximum limit of 64MiB")
    ppc = (cpu_arch or "").startswith("ppc64")
    specs = []
    if boot_mode == "uefi":
        specs.append(PartSpec(ESP, ESP_MB * MiB, type_guid=pt.ESP_GUID, mbr_type=pt.MBR_ESP,
                              name="efi-part"))
    if boot_mode == "bios" and label == "gpt" and not ppc:
        specs.append(PartSpec(BIOS_BOOT, BIOS_BOOT_MB * MiB, type_guid=pt.BIOS_BOOT_GUID,
                              name="bios-boot"))
    if boot_mode == "bios" and ppc:
        specs.append(PartSpec(PREP, PREP_MB * MiB, type_guid=pt.PREP_GUID,
                              mbr_type=pt.MBR_PREP, name="prep", bootable=True))
    if ephemeral_mb:
        specs.append(PartSpec(EPHEMERAL, ephemeral_mb * MiB, name=EPHEMERAL_LABEL))
    if swap_mb:
        specs.append(PartSpec(SWAP, swap_mb * MiB, type_guid=pt.LINUX_SWAP_GUID,
                              mbr_type=pt.MBR_SWAP, name=SWAP_LABEL))
    if configdrive_size:
        specs.append(PartSpec(CONFIGDRIVE, -(-configdrive_size // MiB) * MiB, name="config-v2"))
    # legacy BIOS boot code on an MBR disk looks for the active partition
    specs.append(PartSpec(ROOT, root_mb * MiB, name="root",
                          bootable=boot_mode == "bios" and label == "msdos" and not ppc))
    return label, specs


def create_layout(device: str, *, root_mb: int, swap_mb: int = 0, ephemeral_mb: int = 0,
                  ephemeral_format: str | None = None, preserve_ephemeral: bool = False,
                  boot_mode: str = "bios", disk_label: str | None = None,
                  cpu_arch: str | None = None, configdrive_size: int = 0,
                  timeout: float = 30.0) -> dict[str, str]:
    """Partition ``device`` for a partition image; return {§5.6 key: /dev node}.

    ``root_mb == 0`` gives root the rest of the disk.  The ESP gets vfat, swap
    gets mkswap, and ephemeral gets ``ephemeral_format`` (default ext4) unless
    ``preserve_ephemeral`` keeps an existing ephemeral partition in place.
    """
    label, specs = plan_layout(root_mb=root_mb, swap_mb=swap_mb, ephemeral_mb=ephemeral_mb,
                               boot_mode=boot_mode, disk_label=disk_label, cpu_arch=cpu_arch,
                               configdrive_size=configdrive_size)
    fmt = (ephemeral_format or "ext4").lower()
    if ephemeral_mb and fmt not in EPHEMERAL_FORMATS:
        raise InvalidCommandParamsError(f"ephemeral_format {ephemeral_format!r} is not "
                                        f"supported; use one of {', '.join(EPHEMERAL_FORMATS)}")
    if preserve_ephemeral and ephemeral_mb:
        check_preservable(device, label, specs)
    parts = partition_edit.write_layout(device, label, specs)
    kernel = reread.reread(device, timeout=timeout)
    layout = {key: kernel.partitions[part.number] for key, part in parts.items()}
    for key, node in layout.items():
        if not (key == EPHEMERAL and preserve_ephemeral):
            # stale signatures (an old config-2 label, swap, RAID) must not outlive the layout
            tools.run("wipefs", "--all", "--quiet", node)
    if ESP in layout:
        tools.run("mkfs.vfat", "-F", "32", "-n", ESP_LABEL, layout[ESP])
    if SWAP in layout:
        tools.run("mkswap", "-L", SWAP_LABEL, layout[SWAP])
    if EPHEMERAL in layout and not preserve_ephemeral:
        _mkfs(fmt, layout[EPHEMERAL], EPHEMERAL_LABEL)
    return layout


def partition_uuids(layout: dict[str, str]) -> dict[str, Any]:
    """The partition-image part of ``standby.get_partition_uuids`` (reference §5.6)."""
    if ROOT not in layout:
        raise DeploymentError("the partition layout has no root partition")
    root = layout[ROOT]
    result: dict[str, Any] = {
        "root uuid": filesystem_uuid(root) or partition_uuid(root),
        "efi system partition uuid": filesystem_uuid(layout[ESP]) if ESP in layout else None,
        "partitions": dict(layout),
    }
    if PREP in layout:
        result["PReP Boot partition uuid"] = partition_uuid(layout[PREP])
    return result


def filesystem_uuid(node: str) -> str | None:
    """Filesystem UUID from a low-level probe (no blkid cache, no udev)."""
    proc = tools.run("blkid", "-p", "-o", "value", "-s", "UUID", node, check=False)
    if proc.returncode not in (0, 2):
        raise DeploymentError(f"blkid could not probe {node}: {tools.tail(proc.stderr)}")
    value = proc.stdout.strip()
    return value or None


def partition_uuid(node: str) -> str:
    """PARTUUID from our own table reader: GPT unique GUID, or MBR ``<signature>-<nn>``."""
    disk, number = reread.partition_parent(node)
    table = pt.read_table(disk)
    part = table.get(number)
    if part is None:
        raise DeploymentError(f"{node} is not in the partition table of {disk}")
    if table.kind == "gpt" and part.unique_guid:
        return part.unique_guid
    return f"{table.disk_signature:08x}-{number:02x}"


def _mkfs(fmt: str, node: str, label: str) -> None:
    if fmt == "vfat":
        tools.run("mkfs.vfat", "-n", label.upper()[:11], node)
    elif fmt == "xfs":
        tools.run("mkfs.xfs", "-f", "-q", "-L", label, node)
    else:
        tools.run(f"mkfs.{fmt}", "-F", "-q", "-L", label, node)


def check_preservable(device: str, label: str, specs: list[PartSpec]) -> None:
    """The ephemeral partition must already sit exactly where the new layout puts it."""
    table = pt.read_table(device)
    index = next(i for i, s in enumerate(specs) if s.key == EPHEMERAL)
    start = MiB + sum(s.size_bytes for s in specs[:index])
    size = specs[index].size_bytes
    kind = "gpt" if label == "gpt" else "mbr"
    logical = kind == "mbr" and len(specs) > 4 and index >= 3
    if logical:
        start += MiB * (index - 2)    # each logical partition sits one MiB after its EBR
    match = [p for p in table.partitions if p.start_bytes == start and p.size_bytes == size]
    if table.kind != kind or not match:
        raise DeploymentError(
            f"preserve_ephemeral is set but {device} has no {size // MiB} MiB partition at "
            f"offset {start // MiB} MiB in a {kind} table; refusing to repartition")
