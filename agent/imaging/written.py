"""What "already written" means: this image, these bytes, this disk, untouched since.

A conductor that lost the answer to prepare_image asks again; the agent
then skips the download only when the same image id with the same digest was
written by this agent to the same disk, and the disk's first and last MiB
(where every partition table and boot loader lives, and what every erase
method clears) still read exactly as they did after that write.
"""

from __future__ import annotations

import hashlib
import mmap
import os

from agent.imaging.checksum import Expected
from agent.state import WrittenImage

EDGE = 1 << 20


def _identity(device: str) -> tuple[str, int, int]:
    path = os.path.realpath(device)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return path, os.fstat(fd).st_rdev, os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def fingerprint(device: str) -> str:
    """sha256 over the disk's size and its first and last MiB, read past the page cache."""
    path = os.path.realpath(device)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    buf = mmap.mmap(-1, EDGE)      # page-aligned, as O_DIRECT wants
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        digest = hashlib.sha256(str(size).encode())
        for offset in sorted({0, max(0, size - EDGE)}):
            n = os.preadv(fd, [buf], offset)
            digest.update(memoryview(buf)[:n])
        return digest.hexdigest()
    finally:
        buf.close()
        os.close(fd)


def record(image_id: str, expected: Expected, device: str) -> WrittenImage:
    path, number, size = _identity(device)
    return WrittenImage(image_id=image_id, algo=expected.algo, digest=expected.value.lower(),
                        device=path, device_number=number, size=size,
                        fingerprint=fingerprint(device))


def matches(written: WrittenImage | None, image_id: str, expected: Expected,
            device: str) -> bool:
    if written is None or written.image_id != image_id:
        return False
    if (written.algo, written.digest) != (expected.algo, expected.value.lower()):
        return False
    try:
        if _identity(device) != (written.device, written.device_number, written.size):
            return False
        return fingerprint(device) == written.fingerprint
    except OSError:
        return False
