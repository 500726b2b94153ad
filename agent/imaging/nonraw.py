"""Write a staged non-raw image (qcow2, vmdk, vhd, vhdx, vdi, qed) onto a disk.

qemu-img needs random access to a non-raw image, so the image is staged first
(staging.py chooses where): in an anonymous memfd, in a file, or in a byte
range of a block device (for instance the tail of the target disk, beyond the
image's virtual size).  qemu-img writes the device with O_DIRECT, so apart
from a memory staging its memory stays bounded whatever the image's size.

The disk becomes bootable only at the very end.  The caller has already
cleared the partition tables; this module then

1. re-inspects the staged bytes, because they are what qemu-img will parse;
2. converts the guest disk except its first MiB;
3. calls ``before_head`` (the caller verifies the checksum there and raises to
   stop);
4. converts the first MiB, where the partition tables live;
5. flushes the device.

A crash or a failed checksum at any point before step 4 leaves a disk with no
partition table, which no firmware will boot.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from agent.errors import InvalidImage, UnsafeDevice
from agent.imaging import formats, qemu_img

LOG = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20


def write_nonraw(source: str, source_format: str, device: str, *, source_offset: int = 0,
                 source_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel_check: Callable[[], None] | None = None,
                 before_head: Callable[[], None] | None = None,
                 head_bytes: int = HEAD_BYTES, parallel: int | None = None) -> dict[str, Any]:
    """Convert the image staged at ``source`` onto ``device``; head last.

    ``source`` is a file or a block device; ``source_offset``/``source_size``
    select the staged bytes inside it.  ``progress(done, total)`` counts guest
    bytes.  ``cancel_check`` may raise to stop.  Returns what was done,
    including qemu-img's peak RSS.
    """
    started = time.monotonic()
    fmt = formats.qemu_driver(source_format)
    staged = _staged_size(source, source_offset, source_size)
    device_size = _size(device)
    inspection = formats.inspect(_slice_reader(source, source_offset, staged), staged)
    formats.check(inspection, declared_format=source_format, device_size=device_size)
    src = qemu_img.image_node(source, fmt, offset=source_offset, size=source_size)
    data = qemu_img.info(src)
    _refuse_references(data)
    vsize = int(data["virtual-size"])
    if vsize > device_size:
        raise InvalidImage(f"the image's virtual size {vsize} bytes exceeds the "
                           f"{device_size} bytes of {device}")
    shared = _check_overlap(source, source_offset, staged, device, vsize)
    head = min(head_bytes, vsize)
    body = vsize - head
    LOG.info("writing %s image (%d bytes) from %s to %s: body first, first %d bytes last",
             fmt, vsize, source, device, head)

    def phase(base: int, span: int) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda pct: progress(base + int(span * pct / 100), vsize)

    if progress:
        progress(0, vsize)
    results = []
    if body:
        results.append(qemu_img.convert(
            qemu_img.window(src, head, body), qemu_img.device_node(device, offset=head,
                                                                   size=body),
            progress=phase(0, body), cancel_check=cancel_check, parallel=parallel,
            force_share=shared, action="writing the image body"))
    if before_head:
        before_head()
    if cancel_check:
        cancel_check()
    results.append(qemu_img.convert(
        qemu_img.window(src, 0, head), qemu_img.device_node(device, offset=0, size=head),
        progress=phase(body, head), cancel_check=cancel_check, force_share=shared,
        action="writing the image head"))
    _flush(device)
    if progress:
        progress(vsize, vsize)
    return {"format": fmt, "virtual_size": vsize, "body_bytes": body, "head_bytes": head,
            "peak_rss_bytes": max(r.peak_rss_bytes for r in results),
            "enomem_retries": sum(r.attempts - 1 for r in results),
            "elapsed_s": round(time.monotonic() - started, 3)}


def _size(path: str) -> int:
    with open(path, "rb") as f:
        return os.lseek(f.fileno(), 0, os.SEEK_END)


def _staged_size(source: str, offset: int, size: int | None) -> int:
    total = _size(source)
    if offset < 0 or offset > total or (size is not None and (size < 0 or
                                                              offset + size > total)):
        raise InvalidImage(f"the staged image range offset {offset} size {size} lies outside "
                           f"{source} ({total} bytes)")
    return total - offset if size is None else size


def _slice_reader(source: str, offset: int, size: int) -> formats.ReadAt:
    def read_at(pos: int, n: int) -> bytes:
        n = max(0, min(n, size - pos))
        with open(source, "rb") as f:
            return os.pread(f.fileno(), n, offset + pos)
    return read_at


def _refuse_references(data: dict[str, Any]) -> None:
    # a second opinion from qemu itself; the inspector should already have refused
    spec = (data.get("format-specific") or {}).get("data") or {}
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise InvalidImage(f"the image names a backing file ({data.get('backing-filename')!r})")
    if spec.get("data-file"):
        raise InvalidImage(f"the image names an external data file ({spec['data-file']!r})")


def _disk_extent(path: str) -> tuple[int, int] | None:
    """(whole-disk device number, byte offset on it) for a block device, else None."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return None
    sysdir = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if not os.path.exists(f"{sysdir}/partition"):
        return st.st_rdev, 0
    with open(f"{sysdir}/start", encoding="ascii") as f:
        start = int(f.read()) * 512           # sysfs counts 512-byte units
    with open(os.path.join(os.path.realpath(sysdir), "..", "dev"), encoding="ascii") as f:
        major, minor = (int(x) for x in f.read().split(":"))
    return os.makedev(major, minor), start


def _check_overlap(source: str, offset: int, size: int, device: str, vsize: int) -> bool:
    """Refuse a staging area the guest disk would overwrite; True when they share a disk."""
    src, dst = _disk_extent(source), _disk_extent(device)
    if src is None or dst is None or src[0] != dst[0]:
        return False
    s_start, d_start = src[1] + offset, dst[1]
    if s_start < d_start + vsize and d_start < s_start + size:
        raise UnsafeDevice(f"the staged image ({source} bytes {offset}..{offset + size}) "
                           f"overlaps the {vsize} bytes the image will occupy on {device}")
    return True


def _flush(device: str) -> None:
    fd = os.open(device, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
