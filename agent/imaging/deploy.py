"""Deploy an image: pick the disk, stream it, then fix up the partition table.

This is the one place that composes the imaging stages for a command:
validate → choose device → resolve checksum → stream (source → hash →
decompress → writer) → re-read partitions → config drive → record UUIDs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests

from agent.errors import DeviceNotFound, InvalidImage
from agent.imaging import checksum, image_info
from agent.imaging.source import HTTPSource, fetch_text
from agent.imaging.stream import StreamOptions, StreamReport, stream_image
from agent.progress import Progress
from agent.state import AgentState

LOG = logging.getLogger(__name__)

# magic numbers of formats that need qemu-img; streamed raw they would be garbage
NON_RAW_MAGIC = {b"QFI\xfb": "qcow2", b"KDMV": "vmdk", b"vhdxfile": "vhdx",
                 b"conectix": "vhd", b"QED\x00": "qed"}


def refuse_non_raw(head: bytes, compression: str | None) -> None:
    for magic, fmt in NON_RAW_MAGIC.items():
        if head.startswith(magic):
            raise InvalidImage(f"the image is {fmt}; only raw images (optionally gzip, xz, "
                               "bzip2 or zstd compressed) can be written by this agent")
    if head[64:64 + 4] == b"\x7f\x10\xda\xbe":
        raise InvalidImage("the image is vdi; only raw images can be written by this agent")


def choose_device(state: AgentState) -> tuple[str, str]:
    """The install disk and why it was chosen."""
    from agent.hardware import find_install_disk  # hardware is optional at import time
    disk, reason = find_install_disk(state)
    name = disk["name"] if isinstance(disk, dict) else disk.name
    return name, reason


def make_source(spec: image_info.ImageSpec, state: AgentState,
                cancel_check: Callable[[], None]) -> HTTPSource:
    cfg = state.config
    session = requests.Session()
    if spec.no_proxy and spec.proxies:
        session.trust_env = False
        session.proxies.update({"no_proxy": spec.no_proxy})
    return HTTPSource(spec.urls, session=session, headers=spec.headers, auth=spec.auth,
                      proxies=spec.proxies, timeout=cfg.image_download_connection_timeout,
                      retries=cfg.image_download_connection_retries,
                      retry_interval=cfg.image_download_connection_retry_interval,
                      max_duration=cfg.image_download_max_duration,
                      verify=not cfg.insecure, cancel_check=cancel_check)


def read_mbr_signature(device: str) -> str:
    with open(device, "rb") as f:
        f.seek(440)
        return "0x%08x" % int.from_bytes(f.read(4), "little")


def write_image(state: AgentState, spec: image_info.ImageSpec, *, device: str | None = None,
                progress: Progress | None = None,
                cancel_check: Callable[[], None] = lambda: None,
                options: StreamOptions | None = None) -> tuple[StreamReport, str]:
    """Stream the image onto the install disk; return the report and why that disk."""
    cfg = state.config
    if device is None:
        device, reason = choose_device(state)
    else:
        reason = "chosen by the caller"
    LOG.info("installing image %s on %s (%s)", spec.id, device, reason)
    from agent.imaging import blockdev
    blockdev.check_target(device, allow_loop=cfg.include_loop_devices)
    expected = checksum.resolve(
        spec, cfg.md5_enabled,
        lambda url: fetch_text(url, timeout=cfg.image_download_connection_timeout,
                               headers=spec.headers, auth=spec.auth))
    opts = options or StreamOptions()
    if opts.inspect_head is None:
        opts.inspect_head = refuse_non_raw
    source = make_source(spec, state, cancel_check)
    report = stream_image(source, device, expected, progress=progress,
                          cancel_check=cancel_check, options=opts)
    LOG.info("image %s written to %s: %s", spec.id, device, report.as_dict())
    return report, reason


def record_whole_disk(state: AgentState, spec: image_info.ImageSpec, device: str) -> str:
    root_uuid = read_mbr_signature(device)
    state.partition_uuids = {"root uuid": root_uuid}
    state.written_image_id = spec.id
    return root_uuid


def result_message(spec: image_info.ImageSpec, device: str, uuids: dict[str, Any]) -> str:
    msg = f"image ({spec.id}) written to device {device} root_uuid={uuids.get('root uuid')}"
    if spec.raw.get("deploy_boot_mode") == "uefi" and uuids.get("efi system partition uuid"):
        msg += f" efi_system_partition_uuid={uuids['efi system partition uuid']}"
    return msg


__all__ = ["DeviceNotFound", "choose_device", "record_whole_disk", "result_message",
           "write_image"]


def prepare(state: AgentState, spec: image_info.ImageSpec, configdrive: Any = None, *,
            progress: Progress | None = None, cancel_check: Callable[[], None] = lambda: None,
            force: bool = False, verify_after_write: bool = False,
            write_configdrive: bool = True) -> dict[str, Any]:
    """prepare_image / cache_image / write_image: the image, then the config drive."""
    if spec.is_partition_image:
        raise InvalidImage("partition images (image_type=partition) are not supported yet")
    device, reason = choose_device(state)
    if not force and state.written_image_id == spec.id and state.partition_uuids:
        # a conductor retry after a lost response must not rewrite the disk
        LOG.info("image %s already written to %s by this agent; not writing it again",
                 spec.id, device)
        report = None
    else:
        state.written_image_id = None
        report, reason = write_image(
            state, spec, device=device, progress=progress, cancel_check=cancel_check,
            options=StreamOptions(direct=state.config.image_direct_io,
                                  zero_skip=state.config.image_zero_skip,
                                  verify_after_write=verify_after_write))
        record_whole_disk(state, spec, device)
    message = result_message(spec, device, state.partition_uuids)
    return {"message": message, "device": device, "device_reason": reason,
            "write": report.as_dict() if report else None}
