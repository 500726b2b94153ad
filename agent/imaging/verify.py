"""Read-back verification: the disk holds the bytes that were written.

The device is read with O_DIRECT, so the page cache cannot answer, in one
thread while another hashes what was read: reading and hashing overlap, as
receiving and hashing do in the stream (both release the GIL).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from agent.errors import ImageChecksumError
from agent.imaging import plumbing
from agent.progress import Progress

# one buffer being hashed while the next is read
BUFFERS = 2


def verify_device(device: str, length: int, digest: str, progress: Progress,
                  cancel_check: Callable[[], None], *, offset: int = 0) -> None:
    """Re-read ``length`` bytes at ``offset`` and compare their sha256 with ``digest``."""
    if offset % 4096:
        raise ValueError("read-back verification needs a 4096-byte aligned offset")
    h = hashlib.sha256()
    stages = plumbing.Stages()
    pool = plumbing.Pool(BUFFERS)
    pipe = plumbing.Pipe(stages.abort)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)

    def read() -> None:
        done = 0
        while done < length:
            buf = pool.get(stages.abort)
            want = min(len(buf.view), length - done)
            aligned = (want + 4095) // 4096 * 4096
            n = os.preadv(fd, [buf.view[:aligned]], offset + done)
            if n <= 0:
                raise ImageChecksumError(f"{device} ended at byte {done} while verifying")
            buf.n = min(n, want)
            done += buf.n
            pipe.put(buf)
        pipe.close()

    def hash_stage() -> None:
        done = 0
        while (buf := pipe.get()) is not None:
            h.update(buf.data)
            done += buf.n
            pool.put(buf)
            progress.update(done=done)

    try:
        stages.start("verify-read", read)
        stages.start("verify-hash", hash_stage)
        stages.join(cancel_check)
    finally:
        os.close(fd)
    if h.hexdigest() != digest:
        raise ImageChecksumError(f"read-back verification of {device} failed: the disk holds "
                                 "different bytes than were written")
