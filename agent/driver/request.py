"""What a deploy asks the agent for: ``image_info``, the config drive, the bootloader rule.

Built the way the conductor's ``write_image`` step builds them (reference
§5.1, §6, §7), from the handful of values an operator types on a command line.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import urllib.parse
from typing import Any

from agent.errors import DeployFailed

ISO_MAGIC_OFFSET = 32769


def build_image_info(url: str, checksum: str, *, image_id: str | None = None,
                     disk_format: str | None = "raw", node_uuid: str | None = None,
                     configdrive: Any = None, extra: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """``image_info`` as the conductor's write_image builds it (§5.1).

    ``checksum`` is ``<algo>:<hex>`` (→ os_hash_algo/os_hash_value), a checksum
    file URL, or a bare hex digest (→ legacy ``checksum``).
    """
    info: dict[str, Any] = {
        "id": image_id or os.path.basename(urllib.parse.urlsplit(url).path) or "image",
        "urls": [url], "disk_format": disk_format, "container_format": "bare",
        "stream_raw_images": True}
    algo, sep, value = checksum.partition(":")
    if sep and not checksum.startswith(("http://", "https://")):
        info["os_hash_algo"], info["os_hash_value"] = algo.lower(), value.strip()
    else:
        info["checksum"] = checksum.strip()
    if node_uuid:
        info["node_uuid"] = node_uuid
    if configdrive is not None:
        info["configdrive"] = configdrive
    info.update(extra or {})
    return info


def load_configdrive(arg: str | None) -> Any:
    """``--configdrive``: inline JSON, a URL, or a file (JSON, ISO, gzip, or base64 text)."""
    if not arg:
        return None
    text = arg.strip()
    if text.startswith(("http://", "https://")):
        return text
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DeployFailed(f"--configdrive is not valid JSON: {exc}") from None
    try:
        with open(arg, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DeployFailed(f"cannot read config drive {arg}: {exc}") from None
    if data[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + 5] == b"CD001":
        data = gzip.compress(data)
    if data[:2] == b"\x1f\x8b":
        return base64.b64encode(data).decode()
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            return json.loads(stripped)
        except ValueError as exc:
            raise DeployFailed(f"config drive file {arg} is not valid JSON: {exc}") from None
    return stripped.decode("ascii", "replace")  # already gzip+base64 text


def bootloader_needed(image_info: dict[str, Any], boot_mode: str, root_uuid: Any) -> str | None:
    """Why install_bootloader runs, or None when the conductor would skip it (§7)."""
    if image_info.get("image_type") == "partition":
        return "partition image" if root_uuid else None
    if boot_mode == "uefi":
        return "whole-disk image in UEFI mode"
    return None


def software_raid(node: dict[str, Any] | None) -> bool:
    """Whether the node's ``target_raid_config`` asks for software RAID, as Ironic decides it.

    Ironic 39 (agent deploy, ``prepare_instance_to_boot``) then calls
    install_bootloader whatever the image type and boot mode, so that the boot
    code lands on every member disk.
    """
    config = (node or {}).get("target_raid_config")
    logical = config.get("logical_disks") if isinstance(config, dict) else None
    return isinstance(logical, list) and any(
        isinstance(ld, dict) and ld.get("controller") == "software" for ld in logical)


def bootloader_params(node: dict[str, Any] | None, image_info: dict[str, Any], boot_mode: str,
                      partition_uuids: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(why, install_bootloader params), or (None, {}) when the conductor skips the call.

    For software RAID the root is the image's root filesystem as the operator
    names it in ``instance_info.image_rootfs_uuid`` (the agent cannot tell it
    from the array), falling back to what the agent reported; a whole-disk
    image passes no ESP, as Ironic does.
    """
    root = partition_uuids.get("root uuid")
    efi = partition_uuids.get("efi system partition uuid")
    if software_raid(node):
        root = ((node or {}).get("instance_info") or {}).get("image_rootfs_uuid") or root
        if image_info.get("image_type") != "partition":
            efi = None
        why: str | None = "software RAID"
    else:
        why = bootloader_needed(image_info, boot_mode, root)
    if why is None:
        return None, {}
    return why, {"root_uuid": root, "efi_system_part_uuid": efi,
                 "prep_boot_part_uuid": partition_uuids.get("PReP Boot partition uuid"),
                 "target_boot_mode": boot_mode}
