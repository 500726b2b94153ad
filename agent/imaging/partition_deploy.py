"""Deploy a partition image so that no failure, however late, leaves a bootable disk.

Order:

1. everything that can be judged without the network: sizes, the target, the
   layout against the disk's size, a preserved ephemeral partition;
2. the network: the checksum is resolved and the image's first bytes are
   received and inspected;
3. only then the new partition table and the auxiliary filesystems;
4. the table is taken off the disk again (its bytes kept in memory) while the
   root image streams into the root partition, whose node the kernel keeps;
5. after the checksum passed and the root is on disk, the table goes back;
   then the config drive and the UUIDs.

Any failure after step 3 wipes the first and last MiB of the disk, as the
whole-disk path does; a kill during step 4 finds no partition table at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
from collections.abc import Callable
from typing import Any

from agent.disk import blockdev, partition_edit
from agent.disk import partition_table as pt
from agent.errors import AgentError, DeploymentError, InvalidImage
from agent.imaging import formats, image_info, partition_image
from agent.imaging.stream import OpenedImage, StreamOptions, open_image, stream_image
from agent.progress import Progress
from agent.state import AgentState

LOG = logging.getLogger(__name__)
MiB = 1 << 20
RAW_FORMATS = ("raw", "gpt", "iso")
UNBOOTABLE = ("{device} was left without a partition table (first and last MiB wiped) "
              "and will not boot")


class TableGuard:
    """Keep a freshly written partition table off the disk until ``restore``.

    The kernel keeps the partition nodes it already has, so the root
    partition can be written while no table on disk describes it.  A BSD lock
    on the whole disk keeps udev from re-reading the (empty) table meanwhile.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        table = pt.read_table(device)
        if not table.ok or not table.partitions:
            raise DeploymentError(f"the new partition table on {device} cannot be read back")
        first = min(p.start_bytes for p in table.partitions)
        self.regions = [(0, first)]
        if table.kind == "gpt" and table.last_usable_lba is not None:
            self.regions.append(((table.last_usable_lba + 1) * table.sector_size,
                                 table.disk_size))
        self.kind = table.kind
        self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            LOG.warning("cannot lock %s against udev re-reading it: %s", device, exc.strerror)
        self.saved = [os.pread(self.fd, end - start, start) for start, end in self.regions]

    def lift(self) -> None:
        for start, end in self.regions:
            os.pwrite(self.fd, bytes(end - start), start)
        os.fsync(self.fd)
        if pt.read_table(self.device).kind is not None:
            raise DeploymentError(f"the partition table of {self.device} could not be "
                                  "taken off the disk while the root image is written")

    def restore(self) -> None:
        for (start, _end), data in zip(self.regions, self.saved, strict=True):
            os.pwrite(self.fd, data, start)
        os.fsync(self.fd)
        if pt.read_table(self.device).kind != self.kind:
            raise DeploymentError(f"the partition table of {self.device} did not read back "
                                  "after the root image was written")

    def close(self) -> None:
        os.close(self.fd)     # closing drops the lock


def wipe_edges(device: str) -> str:
    """First and last MiB of the disk: every table, both GPT copies, the boot code."""
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            for start in sorted({0, max(0, size - MiB)}):
                os.pwrite(fd, bytes(min(MiB, size - start)), start)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        LOG.error("could not wipe %s after a failed deploy: %s", device, exc)
        return (f"WARNING: {device} may hold a partition table over a partial image: "
                f"wiping it failed ({exc.strerror})")
    return UNBOOTABLE.format(device=device)


def _raw_only(opened: OpenedImage) -> None:
    inspection = formats.inspect(opened.read_at)
    if inspection.format not in RAW_FORMATS:
        raise InvalidImage(f"the partition image is {inspection.format}; partition images "
                           "must be raw (optionally compressed)")


def deploy(state: AgentState, spec: image_info.ImageSpec, device: str, data: bytes | None,
           *, resolve: Callable[[], Any], open_source: Callable[[], Any],
           progress: Progress | None, cancel_check: Callable[[], None],
           options: StreamOptions) -> dict[str, Any]:
    """Partition ``device``, stream the root image, restore the table, add the config drive.

    ``resolve`` returns the expected checksum and ``open_source`` a new
    HTTPSource; both reach the network, which happens before any write.
    """
    raw = spec.raw
    node = state.node or {}
    cpu_arch = (node.get("properties") or {}).get("cpu_arch") or platform.machine()
    layout_args = {**spec.sizes_mb, "boot_mode": raw.get("deploy_boot_mode") or "bios",
                   "disk_label": raw.get("disk_label"), "cpu_arch": cpu_arch,
                   "configdrive_size": len(data) if data else 0}
    label, specs = partition_image.plan_layout(**layout_args)
    blockdev.check_target(device, allow_loop=state.config.include_loop_devices)
    partition_edit.check_fits(device, label, specs)
    if spec.preserve_ephemeral and spec.sizes_mb.get("ephemeral_mb"):
        partition_image.check_preservable(device, label, specs)

    expected = resolve()
    source = open_source()
    if progress is not None:
        progress.update(phase="connect", unit="bytes")
    try:
        opened = open_image(source)
        _raw_only(opened)
    except BaseException:
        source.close()
        raise
    LOG.info("image %s reached; partitioning %s", spec.id, device)

    guard: TableGuard | None = None
    try:
        try:
            if progress is not None:
                progress.update(phase="partitions", done=0, total=None)
            layout = partition_image.create_layout(
                device, ephemeral_format=raw.get("ephemeral_format"),
                preserve_ephemeral=spec.preserve_ephemeral, **layout_args)
            guard = TableGuard(device)
            guard.lift()
        except BaseException:
            source.close()
            raise
        report = stream_image(source, layout[partition_image.ROOT], expected,
                              progress=progress, cancel_check=cancel_check, options=options,
                              opened=opened)
        guard.restore()
        guard.close()
        guard = None
        steps: dict[str, Any] = {"write": report.as_dict(), "partitions": layout}
        if data is not None:
            from agent.imaging import configdrive
            steps["configdrive"] = configdrive.write_configdrive(
                device, data, partition=layout[partition_image.CONFIGDRIVE])
        state.partition_uuids = partition_image.partition_uuids(layout)
        return steps
    except BaseException as exc:
        if guard is not None:
            guard.close()
        outcome = wipe_edges(device)
        LOG.error("partition image deploy to %s failed: %s; %s", device, exc, outcome)
        if isinstance(exc, AgentError) and outcome not in exc.details:
            exc.details = f"{exc.details}; {outcome}"
        elif not isinstance(exc, AgentError) and isinstance(exc, Exception):
            raise DeploymentError(f"partition image deploy failed: {type(exc).__name__}: "
                                  f"{exc}; {outcome}") from exc
        raise

