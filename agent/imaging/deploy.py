"""Deploy an image: pick the disk, stream it, then fix up the partition table.

This is the one place that composes the imaging stages for a command:

    validate → choose device → resolve checksum → open and inspect the head
    → stream_image:  writer (tables wiped)
                     → body: source → hash → [decompress] → writer (stream.py)
                       or → stage in the disk's tail → qemu-img (nonraw.py)
                     → head → verify
                     on any error, the writer wipes what it wrote
      or, for a non-raw image whose file fits the memory budget (staging.py):
                     source → hash → [decompress] → memory; checksum passed
                     → writer (tables wiped) → qemu-img → verify
                     the disk is untouched until the checksum has passed
    → re-read partitions → config drive → record UUIDs

Partition images put their own table around ``stream_image``
(``_deploy_partition_image``; the order and why: partition_deploy.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from agent.disk import blockdev, partition_edit, partition_table, reread
from agent.hardware import find_install_disk
from agent.imaging import (
    checksum,
    formats,
    image_info,
    partition_deploy,
    partition_image,
    verify,
    written,
)
from agent.imaging import staging as staging_mod
from agent.imaging.head import OpenedImage, open_image
from agent.imaging.source import HTTPSource, fetch_text
from agent.imaging.stream import StreamOptions, StreamReport, stream_body
from agent.imaging.writer import DeviceWriter
from agent.progress import Progress
from agent.state import AgentState

LOG = logging.getLogger(__name__)

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


@contextlib.contextmanager
def _closed_on_error(source: HTTPSource) -> Iterator[None]:
    # on success the source stays open: stream_image reads it and closes it
    try:
        yield
    except BaseException:
        source.close()
        raise


def reach_image(spec: image_info.ImageSpec, state: AgentState, session: requests.Session,
                cancel_check: Callable[[], None], progress: Progress | None) -> OpenedImage:
    """Connect and receive the image's first bytes; nothing is written yet."""
    source = make_source(spec, state, cancel_check, session)
    if progress is not None:
        progress.update(phase="connect", unit="bytes")
    with _closed_on_error(source):
        return open_image(source)


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


def stream_image(opened: OpenedImage, device: str, expected: checksum.Expected, *,
                 options: StreamOptions | None = None, staging: staging_mod.Staging | None = None,
                 progress: Progress | None = None,
                 cancel_check: Callable[[], None] = lambda: None) -> StreamReport:
    """Write the opened image onto ``device``, its first MiB last; raise with the disk wiped.

    With memory staging the disk is not touched at all before the checksum
    has passed; an error until then says so.
    """
    opts = options or StreamOptions()
    progress = progress or Progress()
    if staging is not None and staging.where == staging_mod.MEMORY:
        with staging_mod.stage_in_memory(opened, staging, device, expected, opts, progress,
                                         cancel_check) as (report, stage):
            return staging_mod.write_staged(stage, report, device, opts, progress,
                                            cancel_check)
    if staging is not None:
        opts = dataclasses.replace(opts, base=staging.offset, limit=staging.room,
                                   hold_head=False)
    started = time.monotonic()
    with contextlib.closing(opened.source), DeviceWriter(
            device, direct=opts.direct, zero_skip=opts.zero_skip,
            hash_output="sha256" if opts.verify_after_write else None,
            base=opts.base, hold_head=opts.hold_head, limit=opts.limit) as writer:
        if staging is not None:
            writer.limit_reason = (f"the memory budget is {staging.budget} bytes "
                                   f"({staging_mod.SETTING})")
        # from here until the head is written the disk cannot boot; any error
        # inside this block makes the writer wipe its tables again (writer.py)
        writer.begin()
        report = stream_body(opened, writer, expected, progress=progress,
                             cancel_check=cancel_check, checksum_retries=opts.checksum_retries)
        if opts.verify_after_write:
            # a converted image is checked where it was staged, before qemu-img reads it:
            # the guest disk qemu-img writes has no digest of its own to compare against
            progress.update(phase="verify", done=0, total=writer.position)
            if staging is not None:
                verify.verify_device(device, writer.position, writer.output_digest or "",
                                     progress, cancel_check, offset=writer.base)
        if staging is not None:
            progress.update(phase="convert", done=0, total=staging.virtual_size)
            report.conversion = staging_mod.convert(
                staging, device, writer.pad(4096), device, staging_mod.phase(progress, "convert"),
                cancel_check)
        writer.write_head()
        if opts.verify_after_write:
            if staging is None:
                verify.verify_device(device, writer.position, writer.output_digest or "",
                                     progress, cancel_check)
            report.verified_after_write = True
    report.seconds = round(time.monotonic() - started, 3)
    return report


def write_image(state: AgentState, spec: image_info.ImageSpec, *, device: str,
                progress: Progress | None = None,
                cancel_check: Callable[[], None] = lambda: None,
                options: StreamOptions | None = None,
                expected: checksum.Expected | None = None,
                session: requests.Session | None = None) -> tuple[StreamReport, str]:
    """Stream a whole-disk image onto ``device`` after checking it is safe to."""
    cfg = state.config
    LOG.info("installing image %s on %s", spec.id, device)
    device_size = blockdev.check_target(device, allow_loop=cfg.include_loop_devices)
    session = session or make_session(spec, state)
    if expected is None:
        expected = resolve_checksum(state, spec, session)
    opened = reach_image(spec, state, session, cancel_check, progress)
    with _closed_on_error(opened.source):
        inspection = inspect_image(state, spec, opened, opened.source, device_size)
        place = None if inspection.format in formats.RAW_FAMILY else staging_mod.choose(
            device, device_size, inspection, _file_size(opened),
            staging_mod.memory_budget(cfg.image_staging_memory_mb))
    report = stream_image(opened, device, expected, options=options, staging=place,
                          progress=progress, cancel_check=cancel_check)
    report.image_format = inspection.format
    LOG.info("image %s written to %s: %s", spec.id, device, report.as_dict())
    return report, device


def _file_size(opened: OpenedImage) -> int | None:
    """The image file's size; unknown until the end for a compressed download."""
    return opened.source.total if opened.compression is None else None


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


def _deploy_partition_image(state: AgentState, spec: image_info.ImageSpec, device: str,
                            data: bytes | None, session: requests.Session,
                            options: StreamOptions, progress: Progress | None,
                            cancel_check: Callable[[], None]) -> dict[str, Any]:
    """Partition ``device``, stream the root image, restore the table, add the config drive.

    Everything that can be judged without the network is judged first, then
    the network is reached (and a non-raw root image that fits the memory
    budget received and checksummed), and only then is the disk touched.
    """
    cfg = state.config
    tracker = progress or Progress()
    chosen = partition_deploy.plan(state, spec, device, data)
    expected = resolve_checksum(state, spec, session)
    opened = reach_image(spec, state, session, cancel_check, progress)
    with _closed_on_error(opened.source):
        inspection = partition_deploy.check_root_image(
            opened, chosen, declared=spec.disk_format, permitted=cfg.permitted_image_formats,
            deep=not cfg.disable_deep_image_inspection)
        place = None if inspection.format in formats.RAW_FAMILY else staging_mod.choose(
            "the root partition", chosen.root_bytes, inspection, _file_size(opened),
            staging_mod.memory_budget(cfg.image_staging_memory_mb))
    with contextlib.ExitStack() as stack:
        staged = None
        if place is not None and place.where == staging_mod.MEMORY:
            staged = stack.enter_context(staging_mod.stage_in_memory(
                opened, place, device, expected, options, tracker, cancel_check))
        LOG.info("image %s reached; partitioning %s", spec.id, device)
        # on any error inside this block the disk's first and last MiB are wiped
        with contextlib.closing(opened.source), partition_deploy.PartitionedDisk(
                device, chosen, progress) as disk:
            if staged is not None:
                report = staging_mod.write_staged(staged[1], staged[0], disk.root, options,
                                                  tracker, cancel_check)
            else:
                if place is not None:
                    # the root's tail, judged again now that the partition exists
                    place = staging_mod.choose(disk.root, _node_size(disk.root), inspection,
                                               _file_size(opened), place.budget, memory=False)
                report = stream_image(opened, disk.root, expected, options=options,
                                      staging=place, progress=progress,
                                      cancel_check=cancel_check)
            report.image_format = inspection.format
            disk.restore_table()
            steps: dict[str, Any] = {"write": report.as_dict(), "partitions": disk.layout}
            if data is not None:
                from agent.imaging import configdrive
                steps["configdrive"] = configdrive.write_configdrive(
                    device, data, partition=disk.layout[partition_image.CONFIGDRIVE])
            state.partition_uuids = partition_image.partition_uuids(disk.layout)
    return steps


def _node_size(path: str) -> int:
    with open(path, "rb") as f:
        return os.lseek(f.fileno(), 0, os.SEEK_END)


def _finish_whole_disk(state: AgentState, device: str, data: bytes | None
                       ) -> dict[str, Any]:
    """After the image: backup GPT to the disk end, kernel re-read, config drive."""
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
    # decode (and download) the config drive before the disk is touched
    data = _configdrive_bytes(state, configdrive) if write_configdrive else None
    device, reason = choose_device(state)
    outcome: dict[str, Any] = {"device": device, "device_reason": reason, "write": None}
    session = make_session(spec, state)
    options = _stream_options(state, verify_after_write)
    if spec.is_partition_image:
        state.written_image = None
        outcome.update(_deploy_partition_image(state, spec, device, data, session, options,
                                               progress, cancel_check))
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
