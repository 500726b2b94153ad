"""The disks a RAID step may use, and what the node says about boot mode, label and arch.

Candidates are whole physical disks: the listing's disks (after every
manager's filter), plus the disks the listing hides because a running array
holds them, when that array is going to be stopped.  Left out, with the
reason recorded: disks matched by ``properties.skip_block_devices``, Ironic's
virtual media, and read-only devices.  md arrays are never candidates; an
array matched by the skip list is kept, and its member disks with it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import InvalidCommandParamsError
from agent.hardware import hints
from agent.hardware.disks import Disk, read_member_disk
from agent.hardware.erase_guards import SKIP_LISTED, array_as_disk, virtual_media_reason
from agent.hardware.raid import arrays as md_arrays
from agent.hardware.raid.arrays import MdArray


@dataclasses.dataclass
class Pool:
    disks: list[Disk]                  # usable whole disks, listing order
    skipped: dict[str, str]            # device -> why it is not used
    arrays: list[MdArray]              # every array the kernel knows
    kept: list[MdArray]                # arrays the skip list keeps

    @property
    def others(self) -> list[MdArray]:
        kept = {a.device for a in self.kept}
        return [a for a in self.arrays if a.device not in kept]


def build(listed: Sequence[Disk], node: Any, *, with_members: bool, root: str = "/",
          arrays: Sequence[MdArray] | None = None) -> Pool:
    """Decide the usable disks; ``with_members`` adds the disks of arrays to be stopped."""
    try:
        skip = hints.parse_skip_list(hints.skip_list_from_node(node))
    except Exception as exc:  # noqa: BLE001 - DeviceNotFound or a hint error: say why
        details = getattr(exc, "details", None) or "it cannot be parsed"
        raise InvalidCommandParamsError(f"properties.skip_block_devices: {details}") from None
    found = list(md_arrays.list_arrays(root) if arrays is None else arrays)
    by_name = {d.name: d for d in listed}
    kept = [a for a in found
            if hints.skipped_by(by_name.get(a.device) or array_as_disk(a), skip)]
    whole = [d for d in listed if d.kind != "md"]
    if with_members:
        kept_names = {a.device for a in kept}
        for array in found:
            if array.device in kept_names:
                continue
            for name in array.member_disks:
                if name not in by_name and all(d.name != name for d in whole):
                    disk = read_member_disk(root, name)
                    if disk is not None:
                        whole.append(disk)
    held_by_kept = {d for a in kept for d in a.member_disks}
    usable: list[Disk] = []
    skipped: dict[str, str] = {}
    for disk in whole:
        if hints.skipped_by(disk, skip):
            skipped[disk.name] = SKIP_LISTED
        elif disk.name in held_by_kept:
            skipped[disk.name] = "holds an md array listed in properties.skip_block_devices"
        elif (media := virtual_media_reason(disk)) is not None:
            skipped[disk.name] = media
        elif disk.read_only:
            skipped[disk.name] = "read-only"
        else:
            usable.append(disk)
    return Pool(usable, skipped, found, kept)


def _capabilities(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        pairs = (item.split(":", 1) for item in value.split(",") if ":" in item)
        return {k.strip(): v.strip() for k, v in pairs}
    return {}


def _node_value(node: Any, key: str, direct: str | None = None) -> str | None:
    """instance_info[direct], then instance_info / properties capabilities[key]."""
    node = node if isinstance(node, Mapping) else {}
    info = node.get("instance_info") or {}
    if direct and isinstance(info.get(direct), str) and info[direct]:
        return str(info[direct])
    for section in (info, node.get("properties") or {}):
        value = _capabilities(section.get("capabilities")).get(key)
        if value:
            return value
    return None


def boot_mode(node: Any, root: str = "/") -> str:
    """What the later deploy will boot: the node's word, else how this ramdisk booted."""
    mode = _node_value(node, "boot_mode", "deploy_boot_mode")
    if mode is not None:
        if mode not in ("bios", "uefi"):
            raise InvalidCommandParamsError("the node's boot_mode must be 'bios' or 'uefi'")
        return mode
    return "uefi" if os.path.isdir(os.path.join(root, "sys/firmware/efi")) else "bios"


def disk_label(node: Any) -> str | None:
    """'gpt' or 'msdos' when the node asks for one; None lets the plan choose."""
    label = _node_value(node, "disk_label", "disk_label")
    if label is not None and label not in ("gpt", "msdos"):
        raise InvalidCommandParamsError("the node's disk_label must be 'gpt' or 'msdos'")
    return label


def cpu_arch(node: Any) -> str:
    props = (node or {}).get("properties") or {} if isinstance(node, Mapping) else {}
    arch = props.get("cpu_arch")
    return arch if isinstance(arch, str) and arch else platform.machine()
