"""Deploy a partition image so that no failure, however late, leaves a bootable disk.

Order:

1. everything that can be judged without the network: sizes, the target, the
   layout against the disk's size, a preserved ephemeral partition;
2. the network: the checksum is resolved and the image's first bytes are
   received and inspected; a non-raw root image (qcow2 etc.) must be
   self-contained and its virtual size must fit the root partition, and when
   its file fits the memory budget it is received into memory now and its
   checksum checked, so a bad image never reaches step 3 (staging.py);
3. only then the new partition table and the auxiliary filesystems;
4. the table is taken off the disk again (its bytes kept in memory) while the
   root image streams into the root partition, whose node the kernel keeps
   (a non-raw image: qemu-img converts it there, from memory or from the
   root partition's own tail beyond the virtual size);
5. after the checksum passed and the root is on disk, the table goes back;
   then the config drive and the UUIDs.

Any failure after step 3 wipes the first and last MiB of the disk, as the
whole-disk path does; a kill during step 4 finds no partition table at all.
``deploy._deploy_partition_image`` writes this sequence out; this module holds
its parts: ``plan`` (step 1), ``check_root_image`` (step 2) and
``PartitionedDisk`` (steps 3 to 5).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import platform
from types import TracebackType

from agent.disk import blockdev, partition_edit, reread
from agent.disk import partition_table as pt
from agent.errors import AgentError, DeploymentError, InvalidImage
from agent.imaging import formats, image_info, partition_image
from agent.imaging.head import OpenedImage
from agent.progress import Progress
from agent.state import AgentState

LOG = logging.getLogger(__name__)
MiB = 1 << 20
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
        blockdev.zero_edges(device)
    except OSError as exc:
        LOG.error("could not wipe %s after a failed deploy: %s", device, exc)
        return (f"WARNING: {device} may hold a partition table over a partial image: "
                f"wiping it failed ({exc.strerror})")
    return UNBOOTABLE.format(device=device)


def check_root_image(opened: OpenedImage, chosen: Plan, *, declared: str | None,
                     permitted: list[str], deep: bool) -> formats.Inspection:
    """Step 2: what the root image is; a non-raw one must be safe and fit the root.

    Raw images are written byte for byte as before; anything qemu-img must
    convert passes the same checks as a whole-disk image (formats.py), and
    its virtual size is judged against the root partition before any write.
    """
    size = opened.source.total if opened.compression is None else None
    inspection = formats.inspect(opened.read_at, size)
    if inspection.format in formats.RAW_FAMILY:
        return inspection
    if deep:
        formats.check(inspection, declared_format=declared, permitted_formats=permitted)
    else:
        LOG.warning("deep image inspection is disabled by the controller; the partition "
                    "image was detected as %s", inspection.format)
    vsize = inspection.virtual_size
    if vsize is not None and vsize > chosen.root_bytes:
        raise InvalidImage(f"the {inspection.format} partition image's virtual size ({vsize} "
                           f"bytes) is larger than the root partition ({chosen.root_bytes} "
                           "bytes)")
    return inspection


@dataclasses.dataclass(frozen=True)
class Plan:
    """The partition layout an image asks for, judged against the disk before any write."""

    root_mb: int
    swap_mb: int
    ephemeral_mb: int
    boot_mode: str
    disk_label: str | None
    cpu_arch: str | None
    configdrive_size: int
    ephemeral_format: str | None
    preserve_ephemeral: bool
    # the root partition's size; with root_mb 0 (the rest of the disk) an upper bound
    root_bytes: int = 0


def plan(state: AgentState, spec: image_info.ImageSpec, device: str,
         data: bytes | None) -> Plan:
    """Step 1: sizes, the target, the layout against the disk, a preserved ephemeral."""
    refuse_md(device)
    raw = spec.raw
    node = state.node or {}
    cpu_arch = (node.get("properties") or {}).get("cpu_arch") or platform.machine()
    sizes = spec.sizes_mb
    chosen = Plan(root_mb=sizes.get("root_mb", 0), swap_mb=sizes.get("swap_mb", 0),
                  ephemeral_mb=sizes.get("ephemeral_mb", 0),
                  boot_mode=raw.get("deploy_boot_mode") or "bios",
                  disk_label=raw.get("disk_label"), cpu_arch=cpu_arch,
                  configdrive_size=len(data) if data else 0,
                  ephemeral_format=raw.get("ephemeral_format"),
                  preserve_ephemeral=spec.preserve_ephemeral)
    label, specs = partition_image.plan_layout(
        root_mb=chosen.root_mb, swap_mb=chosen.swap_mb, ephemeral_mb=chosen.ephemeral_mb,
        boot_mode=chosen.boot_mode, disk_label=chosen.disk_label, cpu_arch=chosen.cpu_arch,
        configdrive_size=chosen.configdrive_size)
    disk_size = blockdev.check_target(device, allow_loop=state.config.include_loop_devices)
    partition_edit.check_fits(device, label, specs)
    if chosen.preserve_ephemeral and chosen.ephemeral_mb:
        partition_image.check_preservable(device, label, specs)
    root = chosen.root_mb * MiB or disk_size - MiB - sum(
        s.size_bytes for s in specs if s.key != partition_image.ROOT)
    return dataclasses.replace(chosen, root_bytes=root)


def refuse_md(device: str) -> None:
    """Partition images do not go onto software RAID: say so before anything is touched.

    Their boot partitions (ESP, BIOS boot, PReP) would be created inside the
    array, where no firmware looks; they belong on the member disks, which
    this layout does not do.  Whole-disk images are supported on md devices.
    """
    name = os.path.basename(os.path.realpath(device))
    if os.path.isdir(os.path.join(reread.SYS_BLOCK, name, "md")):
        raise DeploymentError(
            f"partition images cannot be deployed onto the software RAID device {device}: "
            "their boot partitions would land inside the array, where firmware cannot read "
            "them. Use a whole-disk image for software RAID")


class PartitionedDisk:
    """Steps 3 to 5: the new table, lifted off the disk while the root partition is written.

    ``with PartitionedDisk(...) as disk`` partitions the disk and takes the
    table off it; ``disk.restore_table()`` puts it back.  An error anywhere
    inside the block, or while partitioning, wipes the first and last MiB of
    the disk and says so in the error.
    """

    def __init__(self, device: str, chosen: Plan, progress: Progress | None) -> None:
        self.device = device
        self.plan = chosen
        self.progress = progress
        self.layout: dict[str, str] = {}
        self._guard: TableGuard | None = None

    @property
    def root(self) -> str:
        return self.layout[partition_image.ROOT]

    def __enter__(self) -> PartitionedDisk:
        p = self.plan
        try:
            if self.progress is not None:
                self.progress.update(phase="partitions", done=0, total=None)
            self.layout = partition_image.create_layout(
                self.device, root_mb=p.root_mb, swap_mb=p.swap_mb, ephemeral_mb=p.ephemeral_mb,
                ephemeral_format=p.ephemeral_format, preserve_ephemeral=p.preserve_ephemeral,
                boot_mode=p.boot_mode, disk_label=p.disk_label, cpu_arch=p.cpu_arch,
                configdrive_size=p.configdrive_size)
            self._guard = TableGuard(self.device)
            self._guard.lift()
        except BaseException as exc:
            self._fail(exc)
            raise
        return self

    def restore_table(self) -> None:
        """Step 5: the root is on disk and its checksum passed; the table goes back."""
        if self._guard is not None:
            self._guard.restore()
            self._guard.close()
            self._guard = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            if self._guard is not None:
                self._guard.close()
                self._guard = None
            return
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        outcome = wipe_edges(self.device)
        LOG.error("partition image deploy to %s failed: %s; %s", self.device, exc, outcome)
        if isinstance(exc, AgentError) and outcome not in exc.details:
            exc.details = f"{exc.details}; {outcome}"
        elif not isinstance(exc, AgentError) and isinstance(exc, Exception):
            raise DeploymentError(f"partition image deploy failed: {type(exc).__name__}: "
                                  f"{exc}; {outcome}") from exc
