"""Where a non-raw image file waits, checksummed, before qemu-img converts it.

qemu-img needs random access to a qcow2 (vmdk, vhd, vhdx, vdi, qed), so the
downloaded file is staged first, in one of two places:

``memory``
    an anonymous memfd, when the file fits the memory budget.  The disk is not
    touched until the file's checksum has passed.  The memfd has no name in
    any filesystem: if the agent dies, the kernel frees it with the agent's
    last descriptor; closing it frees the memory on every other path.
``disk-tail``
    the target's own bytes beyond the image's virtual size, for a file the
    budget cannot hold.  The target is wiped first and stays unbootable until
    qemu-img writes the guest disk's first MiB, last.

When neither can hold the file, the image is refused before the disk is
touched, with both figures.  A file whose size is unknown in advance (a
compressed download) goes to whichever place is larger, and is stopped with
both figures the moment it outgrows it.

The memory budget (``image_staging_memory_mb``) defaults to ``auto``: the
smaller of three quarters of the memory available and that memory less
qemu-img's address-space cap.  "Available" is the kernel's MemAvailable,
which already leaves out the ramdisk's own files, lowered to what the agent's
memory cgroup still allows.  The quarter kept back covers the agent's buffers
and a decompressor (``xz -T0``) while the file arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from agent.errors import AgentError, ImageChecksumError, ImageWriteError, InvalidImage
from agent.imaging import checksum, formats, nonraw, qemu_img
from agent.imaging.head import OpenedImage
from agent.imaging.stream import StreamOptions, StreamReport, stream_body
from agent.imaging.writer import DeviceWriter
from agent.progress import Progress

LOG = logging.getLogger(__name__)

MiB = 1 << 20
MEMORY = "memory"
DISK_TAIL = "disk-tail"
# qemu-img runs under this address-space cap, so it can never need more
RESERVE = qemu_img.ADDRESS_SPACE_LIMIT
UNLIMITED = 1 << 60         # cgroup v1 reports "no limit" as a huge page-rounded number
SETTING = "image_staging_memory_mb"


@dataclasses.dataclass(frozen=True)
class Staging:
    """Where the image file goes, and how much of it that place takes."""

    where: str              # MEMORY or DISK_TAIL
    format: str
    virtual_size: int
    offset: int             # on the target (disk-tail); 0 in memory
    room: int               # most bytes of image file this place takes
    budget: int             # the memory budget
    disk_room: int          # the target's bytes beyond the virtual size


# --- the memory budget -------------------------------------------------------------------

def _meminfo_available(path: str = "/proc/meminfo") -> int:
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable missing from /proc/meminfo")


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text == "max" or not text.isdigit() else int(text)


def _levels(base: str, path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return [os.path.join(base, *parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_headroom(proc_cgroup: str = "/proc/self/cgroup",
                    root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes the agent's memory cgroup (and every ancestor) still allows, or None."""
    try:
        with open(proc_cgroup, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):           # cgroup v1
            files = [(os.path.join(d, "memory.limit_in_bytes"),
                      os.path.join(d, "memory.usage_in_bytes"))
                     for d in _levels(os.path.join(root, "memory"), path)]
        elif controllers == "":                          # cgroup v2, unified or hybrid
            base = root if os.path.exists(os.path.join(root, "cgroup.controllers")) \
                else os.path.join(root, "unified")
            files = [(os.path.join(d, "memory.max"), os.path.join(d, "memory.current"))
                     for d in _levels(base, path)]
        else:
            continue
        for limit_file, usage_file in files:
            limit, usage = _read_int(limit_file), _read_int(usage_file)
            if limit is not None and usage is not None and limit < UNLIMITED:
                rooms.append(max(0, limit - usage))
    return min(rooms) if rooms else None


def available_memory() -> int:
    """What the agent may still take without pressing the kernel (or its cgroup)."""
    avail = _meminfo_available()
    room = cgroup_headroom()
    return avail if room is None else min(avail, room)


def memory_budget(setting: int | str, available: int | None = None) -> int:
    """Bytes an image file may take in memory: ``auto`` or at most ``setting`` MiB.

    Either way the agent leaves qemu-img's reserve free.
    """
    avail = available_memory() if available is None else available
    ceiling = max(0, avail - RESERVE)
    if setting == "auto":
        return min(ceiling, avail * 3 // 4)
    return min(ceiling, int(setting) * MiB)


# --- choosing ----------------------------------------------------------------------------

def choose(target: str, target_size: int, inspection: formats.Inspection,
           file_size: int | None, budget: int, *, memory: bool = True) -> Staging:
    """Memory when the file fits the budget, else the target's tail, else refuse.

    ``file_size`` is None when the download is compressed; then the larger
    place is taken and the stream is stopped if the file outgrows it.
    ``memory=False`` judges the tail alone (the budget is still reported).
    """
    vsize = inspection.virtual_size or 0
    stage_at = -(-(vsize + MiB) // MiB) * MiB
    disk_room = max(0, target_size - stage_at)
    fits_memory = memory and budget > 0 and (budget >= disk_room if file_size is None
                                             else file_size <= budget)
    fits_disk = disk_room > 0 and (file_size is None or file_size <= disk_room)
    where = MEMORY if fits_memory else DISK_TAIL if fits_disk else None
    if where is None:
        raise InvalidImage(
            f"there is no room to stage this {inspection.format} image file "
            f"({file_size if file_size is not None else 'unknown'} bytes) for conversion: "
            f"the memory budget is {budget} bytes ({SETTING}) and {target} "
            f"({target_size} bytes) has {disk_room} bytes beyond the image's virtual size "
            f"({vsize} bytes)")
    LOG.info("staging the %s image file (%s bytes) in %s: memory budget %d bytes, "
             "room on %s %d bytes", inspection.format,
             file_size if file_size is not None else "unknown", where, budget, target,
             disk_room)
    if where == MEMORY:
        return Staging(MEMORY, inspection.format, vsize, 0, budget, budget, disk_room)
    return Staging(DISK_TAIL, inspection.format, vsize, stage_at, disk_room, budget, disk_room)


def outgrown(staging: Staging, at: int) -> str:
    """Why a file of unknown size was stopped at byte ``at``; both figures."""
    return (f"the image file outgrew its staging area at byte {at}: the memory budget is "
            f"{staging.budget} bytes ({SETTING}) and the target has {staging.disk_room} "
            "bytes beyond the image's virtual size")


# --- memory ------------------------------------------------------------------------------

class MemoryStage:
    """A sink for ``stream.stream_body`` that keeps the image file in an anonymous memfd.

    Used as a context manager it frees the memory on the way out, whatever
    happened.  ``seal`` makes the checksummed bytes immutable before qemu-img
    reads them through ``path``.
    """

    direct = False
    zero_skip = False
    zero_path = "write"
    bytes_zeroed = 0

    def __init__(self, staging: Staging, target: str) -> None:
        self.staging = staging
        self.device = target            # named in reports; never written here
        self.position = 0
        self.fd = os.memfd_create("deploy-agent-image", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)

    @property
    def path(self) -> str:
        # qemu-img (a child, same user) opens the agent's descriptor by name
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def write(self, data: memoryview) -> None:
        end = self.position + len(data)
        if end > self.staging.room:
            raise InvalidImage(outgrown(self.staging, self.staging.room))
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], self.position + done)
        except OSError as exc:
            raise ImageWriteError(f"staging the image file in memory failed at byte "
                                  f"{self.position + done}: {exc.strerror}") from None
        self.position = end

    def rewind(self) -> None:
        os.ftruncate(self.fd, 0)        # gives the pages back
        self.position = 0

    def finish_body(self) -> None:
        pass

    def seal(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MemoryStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- converting --------------------------------------------------------------------------

def phase(progress: Progress, name: str) -> Callable[[int, int], None]:
    return lambda done, total: progress.update(phase=name, done=done, total=total)


@contextlib.contextmanager
def stage_in_memory(opened: OpenedImage, place: Staging, device: str,
                    expected: checksum.Expected, opts: StreamOptions, progress: Progress,
                    cancel_check: Callable[[], None]
                    ) -> Iterator[tuple[StreamReport, MemoryStage]]:
    """Receive the image file into memory until its checksum passed; ``device`` untouched.

    The memory is given back when the block ends, however it ends.
    """
    with MemoryStage(place, device) as stage:
        try:
            with contextlib.closing(opened.source):
                report = stream_body(opened, stage, expected, progress=progress,
                                     cancel_check=cancel_check,
                                     checksum_retries=opts.checksum_retries)
        except AgentError as exc:
            exc.details = f"{exc.details}; {device} was not touched"
            exc.args = (exc.details,)
            raise
        stage.seal()        # qemu-img reads exactly the bytes whose checksum passed
        report.write_path = "memory"
        yield report, stage


def write_staged(stage: MemoryStage, report: StreamReport, device: str,
                 opts: StreamOptions, progress: Progress,
                 cancel_check: Callable[[], None]) -> StreamReport:
    """qemu-img writes the checksummed file in memory onto ``device``, its first MiB last."""
    started = time.monotonic()
    place = stage.staging
    with DeviceWriter(device, direct=opts.direct, zero_skip=False, hold_head=False) as writer:
        # from here until qemu-img writes the first MiB the disk cannot boot; an
        # error inside this block wipes the tables again (writer.py)
        writer.begin()
        progress.update(phase="convert", done=0, total=place.virtual_size)
        report.conversion = convert(place, stage.path, stage.position, device,
                                    phase(progress, "convert"), cancel_check)
        writer.write_head()
        if opts.verify_after_write:
            vsize = report.conversion["virtual_size"]
            progress.update(phase="verify", done=0, total=vsize)
            verify_converted(stage, device, vsize, phase(progress, "verify"), cancel_check)
            report.verified_after_write = True
    report.device = device
    report.seconds = round(report.seconds + time.monotonic() - started, 3)
    return report


def convert(staging: Staging, source: str, staged: int, device: str,
            progress: Callable[[int, int], None],
            cancel_check: Callable[[], None]) -> dict[str, Any]:
    """qemu-img: the staged file becomes the guest disk on ``device``, its first MiB last."""
    offset = staging.offset if staging.where == DISK_TAIL else 0
    result = nonraw.write_nonraw(source, staging.format, device, source_offset=offset,
                                 source_size=staged, progress=progress,
                                 cancel_check=cancel_check)
    LOG.info("converted %s image staged in %s: %s", staging.format, staging.where, result)
    out = {**result, "staging": staging.where, "staged_bytes": staged,
           "staging_memory_budget": staging.budget}
    if staging.where == DISK_TAIL:
        out["staged_at"] = offset
    return out


def verify_converted(stage: MemoryStage, device: str, virtual_size: int,
                     progress: Callable[[int, int], None],
                     cancel_check: Callable[[], None]) -> None:
    """Read the disk back against the staged image: qemu-img compares guest bytes."""
    fmt = formats.qemu_driver(stage.staging.format)
    same = qemu_img.compare(qemu_img.image_node(stage.path, fmt),
                            qemu_img.device_node(device, size=virtual_size),
                            progress=lambda pct: progress(int(virtual_size * pct / 100),
                                                          virtual_size),
                            cancel_check=cancel_check)
    if not same:
        raise ImageChecksumError(f"read-back verification of {device} failed: the disk does "
                                 "not hold the guest bytes of the staged image")
