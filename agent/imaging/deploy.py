"""Deploy an image: pick the disk, stream it, then fix up the partition table.

This is the one place that composes the imaging stages for a command:
validate → choose device → resolve checksum → stream (source → hash →
decompress → writer) → re-read partitions → config drive → record UUIDs.
Partition images take their own order (agent/imaging/partition_deploy.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import requests

from agent.errors import InvalidImage
from agent.imaging import checksum, formats, image_info
from agent.imaging.source import HTTPSource, fetch_text
from agent.imaging.stream import OpenedImage, StreamOptions, StreamReport, open_image, stream_image
from agent.imaging.writer import DeviceWriter
from agent.progress import Progress
from agent.state import AgentState

LOG = logging.getLogger(__name__)

RAW_FORMATS = ("raw", "gpt", "iso")
MiB = 1 << 20


def inspect_image(state: AgentState, spec: image_info.ImageSpec, opened: OpenedImage,
                  source: HTTPSource, device_size: int) -> formats.Inspection:
    """Decide what the bytes are, and refuse what policy forbids, before any write."""
    size = source.total if opened.compression is None else None
    inspection = formats.inspect(opened.read_at, size)
    if state.config.disable_deep_image_inspection:
        LOG.warning("deep image inspection is disabled by the controller; %s detected as %s",
                    spec.id, inspection.format)
    else:
        formats.check(inspection, declared_format=spec.disk_format,
                      permitted_formats=state.config.permitted_image_formats,
                      device_size=device_size, image_size=size)
    LOG.info("image %s is %s%s", spec.id, inspection.format,
             f" ({opened.compression} compressed)" if opened.compression else "")
    return inspection


def choose_device(state: AgentState) -> tuple[str, str]:
    """The install disk and why it was chosen."""
    from agent.hardware import find_install_disk  # hardware is optional at import time
    disk, reason = find_install_disk(state)
    name = disk["name"] if isinstance(disk, dict) else disk.name
    return name, reason


def make_session(spec: image_info.ImageSpec, state: AgentState) -> requests.Session:
    """One session per image, so its checksum file and its bytes see the same TLS
    verification (``insecure``) and the same proxies."""
    session = requests.Session()
    session.verify = not state.config.insecure
    if spec.no_proxy and spec.proxies:
        session.trust_env = False
        session.proxies.update({"no_proxy": spec.no_proxy})
    if spec.proxies:
        session.proxies.update(spec.proxies)
    return session


def make_source(spec: image_info.ImageSpec, state: AgentState,
                cancel_check: Callable[[], None],
                session: requests.Session | None = None) -> HTTPSource:
    cfg = state.config
    return HTTPSource(spec.urls, session=session or make_session(spec, state),
                      headers=spec.headers, auth=spec.auth,
                      proxies=spec.proxies, timeout=cfg.image_download_connection_timeout,
                      retries=cfg.image_download_connection_retries,
                      retry_interval=cfg.image_download_connection_retry_interval,
                      max_duration=cfg.image_download_max_duration,
                      verify=not cfg.insecure, cancel_check=cancel_check)


def resolve_checksum(state: AgentState, spec: image_info.ImageSpec,
                     session: requests.Session) -> checksum.Expected:
    cfg = state.config
    return checksum.resolve(
        spec, cfg.md5_enabled,
        lambda url: fetch_text(url, session=session,
                               timeout=cfg.image_download_connection_timeout,
                               headers=spec.headers, auth=spec.auth))


def write_image(state: AgentState, spec: image_info.ImageSpec, *, device: str,
                progress: Progress | None = None,
                cancel_check: Callable[[], None] = lambda: None,
                options: StreamOptions | None = None,
                expected: checksum.Expected | None = None,
                session: requests.Session | None = None) -> tuple[StreamReport, str]:
    """Stream a whole-disk image onto ``device`` after checking it is safe to."""
    from agent.disk import blockdev
    cfg = state.config
    LOG.info("installing image %s on %s", spec.id, device)
    device_size = blockdev.check_target(device, allow_loop=cfg.include_loop_devices)
    session = session or make_session(spec, state)
    if expected is None:
        expected = resolve_checksum(state, spec, session)
    opts = options or StreamOptions()
    source = make_source(spec, state, cancel_check, session)
    if progress is not None:
        progress.update(phase="connect", unit="bytes")
    opened = open_image(source)
    try:
        inspection = inspect_image(state, spec, opened, source, device_size)
    except BaseException:
        source.close()
        raise
    conversion: dict[str, Any] = {}
    if inspection.format not in RAW_FORMATS:
        opts = _staging_options(opts, device, device_size, inspection, opened, source,
                                progress, cancel_check, conversion)
    report = stream_image(source, device, expected, progress=progress,
                          cancel_check=cancel_check, options=opts, opened=opened)
    report.image_format = inspection.format
    report.conversion = conversion or None
    LOG.info("image %s written to %s: %s", spec.id, device, report.as_dict())
    return report, device


def _staging_options(opts: StreamOptions, device: str, device_size: int,
                     inspection: formats.Inspection, opened: OpenedImage,
                     source: HTTPSource, progress: Progress | None,
                     cancel_check: Callable[[], None],
                     conversion: dict[str, Any]) -> StreamOptions:
    """Non-raw images land, checksummed, behind their own virtual size; qemu-img converts.

    The image file is streamed (and hashed) into the disk's tail beyond the
    virtual size, so RAM never holds it and qemu-img never reads a byte whose
    checksum has not passed.  Then qemu-img writes the body, and the first MiB
    last, from that staging area onto the front of the same disk.
    """
    vsize = inspection.virtual_size or 0
    stage_at = -(-(vsize + MiB) // MiB) * MiB
    room = device_size - stage_at
    file_size = source.total if opened.compression is None else None
    if room <= 0 or (file_size is not None and file_size > room):
        need = stage_at + (file_size or 0)
        raise InvalidImage(
            f"{device} ({device_size} bytes) is too small to stage this {inspection.format} "
            f"image: it needs the virtual size ({vsize} bytes) plus the image file "
            f"({file_size or 'unknown'} bytes), {need} bytes in all")

    def convert(writer: DeviceWriter) -> None:
        from agent.imaging import nonraw

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress.update(phase="convert", done=done, total=total)
        if progress is not None:
            progress.update(phase="convert", done=0, total=vsize)
        staged = writer.pad(4096)
        result = nonraw.write_nonraw(device, inspection.format, device, source_offset=stage_at,
                                     source_size=staged, progress=report,
                                     cancel_check=cancel_check)
        LOG.info("converted %s image: %s", inspection.format, result)
        conversion.update(result, staged_at=stage_at, staged_bytes=staged)

    return dataclasses.replace(opts, base=stage_at, limit=room, hold_head=False,
                               after_body=convert)


def result_message(spec: image_info.ImageSpec, device: str, uuids: dict[str, Any]) -> str:
    msg = f"image ({spec.id}) written to device {device} root_uuid={uuids.get('root uuid')}"
    if spec.raw.get("deploy_boot_mode") == "uefi" and uuids.get("efi system partition uuid"):
        msg += f" efi_system_partition_uuid={uuids['efi system partition uuid']}"
    return msg




def _configdrive_bytes(state: AgentState, value: Any) -> bytes | None:
    if value is None or value == "":
        return None     # spare the pycdlib import (memory) when there is no drive
    from agent.imaging import configdrive
    return configdrive.decode_configdrive(
        value, timeout=state.config.image_download_connection_timeout)


def _stream_options(state: AgentState, verify: bool) -> StreamOptions:
    return StreamOptions(direct=state.config.image_direct_io,
                         zero_skip=state.config.image_zero_skip, verify_after_write=verify)


def _finish_whole_disk(state: AgentState, device: str, data: bytes | None
                       ) -> dict[str, Any]:
    """After the image: backup GPT to the disk end, kernel re-read, config drive."""
    from agent.disk import partition_edit, partition_table, reread
    table = partition_table.read_table(device)
    steps: dict[str, Any] = {"table": table.kind}
    if table.kind == "gpt" and table.backup_misplaced:
        # growpart and the firmware both expect the backup header at the very end
        partition_edit.relocate_backup(device)
        steps["backup_gpt_relocated"] = True
    steps["reread"] = reread.reread(device).method
    if data is not None:
        from agent.imaging import configdrive
        steps["configdrive"] = configdrive.write_configdrive(device, data)
    state.partition_uuids = {"root uuid": partition_table.mbr_disk_signature(device)}
    return steps


def prepare(state: AgentState, spec: image_info.ImageSpec, configdrive: Any = None, *,
            progress: Progress | None = None, cancel_check: Callable[[], None] = lambda: None,
            force: bool = False, verify_after_write: bool = False,
            write_configdrive: bool = True) -> dict[str, Any]:
    """prepare_image / cache_image / write_image: the image, then the config drive."""
    from agent.disk import blockdev
    from agent.imaging import partition_deploy, written
    # decode (and download) the config drive before the disk is touched
    data = _configdrive_bytes(state, configdrive) if write_configdrive else None
    device, reason = choose_device(state)
    outcome: dict[str, Any] = {"device": device, "device_reason": reason, "write": None}
    session = make_session(spec, state)
    options = _stream_options(state, verify_after_write)
    if spec.is_partition_image:
        state.written_image = None
        outcome.update(partition_deploy.deploy(
            state, spec, device, data,
            resolve=lambda: resolve_checksum(state, spec, session),
            open_source=lambda: make_source(spec, state, cancel_check, session),
            progress=progress, cancel_check=cancel_check, options=options))
        outcome["message"] = result_message(spec, device, state.partition_uuids)
        return outcome
    blockdev.check_target(device, allow_loop=state.config.include_loop_devices)
    expected = resolve_checksum(state, spec, session)
    if not force and state.partition_uuids and written.matches(
            state.written_image, spec.id, expected, device):
        # a conductor retry after a lost response must not rewrite the disk
        LOG.info("image %s (%s %s) already written to %s by this agent, which is unchanged "
                 "since; not writing it again", spec.id, expected.algo, expected.value, device)
        if data is not None:
            outcome.update(_finish_whole_disk(state, device, data))
    else:
        state.written_image = None
        report, _ = write_image(state, spec, device=device, progress=progress,
                                cancel_check=cancel_check, options=options,
                                expected=expected, session=session)
        outcome["write"] = report.as_dict()
        if progress is not None:
            progress.update(phase="configdrive" if data else "partitions", done=0, total=None)
        outcome.update(_finish_whole_disk(state, device, data))
    state.written_image = written.record(spec.id, expected, device)
    outcome["message"] = result_message(spec, device, state.partition_uuids)
    return outcome
