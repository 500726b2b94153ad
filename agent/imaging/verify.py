"""Read-back verification: the disk holds the bytes that were written."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from agent.errors import ImageChecksumError
from agent.imaging import plumbing
from agent.progress import Progress


def verify_device(device: str, length: int, digest: str, progress: Progress,
                  cancel_check: Callable[[], None], *, offset: int = 0) -> None:
    """Re-read ``length`` bytes at ``offset`` with O_DIRECT, so the page cache cannot answer."""
    if offset % 4096:
        raise ValueError("read-back verification needs a 4096-byte aligned offset")
    h = hashlib.sha256()
    buf = plumbing.Buffer(plumbing.BUFFER_SIZE)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        done = 0
        while done < length:
            cancel_check()
            want = min(len(buf.view), length - done)
            aligned = (want + 4095) // 4096 * 4096
            n = os.preadv(fd, [buf.view[:aligned]], offset + done)
            if n <= 0:
                raise ImageChecksumError(f"{device} ended at byte {done} while verifying")
            n = min(n, want)
            h.update(buf.view[:n])
            done += n
            progress.update(done=done)
    finally:
        os.close(fd)
    if h.hexdigest() != digest:
        raise ImageChecksumError(f"read-back verification of {device} failed: the disk holds "
                                 "different bytes than were written")

