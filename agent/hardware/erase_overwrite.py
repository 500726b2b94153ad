"""Software erase: verified discard, and the shred-style overwrite fallback.

Discard alone proves nothing (many devices keep the data, or return it on
read), so a discard only counts when sampled reads across the whole device
then return zeros.  The overwrite writes AES-CTR keystream (fast, and not
compressible or deduplicable by the device) for each random pass, then zeros,
with direct I/O so progress reflects the device and not the page cache.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Callable

from agent import tools
from agent.disk import sysfs
from agent.errors import AgentError
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported

LOG = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
VERIFY_SAMPLES = 64
VERIFY_LENGTH = 1024 * 1024

Progress = Callable[[float], None]        # fraction of this disk's work done, 0..1
CancelCheck = Callable[[], None]


def _open_direct(device: str, flags: int) -> int:
    try:
        return os.open(device, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        # some virtual devices reject O_DIRECT; buffered I/O plus fsync still works
        return os.open(device, flags | os.O_CLOEXEC)


def _sample_offsets(size: int, length: int) -> list[int]:
    if size <= length:
        return [0]
    last = size - length
    step = last / (VERIFY_SAMPLES - 1)
    return sorted({int(i * step) // 4096 * 4096 for i in range(VERIFY_SAMPLES)} | {last})


def verify_zero(disk: Disk) -> bool:
    """True when sampled regions from start to end all read back as zeros."""
    try:
        fd = _open_direct(disk.name, os.O_RDONLY)
    except OSError as exc:
        raise EraseFailed(f"cannot read {disk.name} back after discard: {exc}") from None
    buf = mmap.mmap(-1, VERIFY_LENGTH)    # page-aligned, as O_DIRECT requires
    try:
        with memoryview(buf) as view:
            size = os.lseek(fd, 0, os.SEEK_END)
            for offset in _sample_offsets(size, VERIFY_LENGTH):
                got = os.preadv(fd, [view[:min(VERIFY_LENGTH, size - offset)]], offset)
                if view[:got].tobytes().count(0) != got:
                    LOG.info("%s reads non-zero data at offset %d after discard", disk.name,
                             offset)
                    return False
        return True
    finally:
        buf.close()
        os.close(fd)


def discard(disk: Disk, progress: Progress) -> str:
    max_bytes = sysfs.read_int(os.path.join(disk.sysfs_path, "queue", "discard_max_bytes"))
    if not max_bytes:
        raise EraseUnsupported("the device does not support discard")
    try:
        tools.run("blkdiscard", "--force", disk.name, timeout=6 * 3600)
    except AgentError as exc:
        raise EraseFailed(f"blkdiscard failed: {exc.details}") from None
    progress(0.9)
    if not verify_zero(disk):
        raise EraseFailed("the device still returns data after discard")
    progress(1.0)
    return "verified discard"


def _keystream() -> Callable[[int], bytes]:
    # cryptography's native module costs ~6 MiB of RSS: only an erase pays for it
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(CHUNK)
    return lambda n: encryptor.update(zeros[:n])


def overwrite(disk: Disk, iterations: int, zeroize: bool, progress: Progress,
              check_cancelled: CancelCheck) -> str:
    passes = [True] * iterations + ([False] if zeroize else [])
    if not passes:
        raise EraseUnsupported("overwriting is disabled (no random passes, no zero pass)")
    try:
        fd = _open_direct(disk.name, os.O_WRONLY)
    except OSError as exc:
        raise EraseFailed(f"cannot open {disk.name} for writing: {exc}") from None
    buf = mmap.mmap(-1, CHUNK)            # page-aligned, as O_DIRECT requires
    try:
        with memoryview(buf) as view:
            size = os.lseek(fd, 0, os.SEEK_END)
            for index, random_pass in enumerate(passes):
                stream = _keystream() if random_pass else None
                if not random_pass:
                    view[:] = bytes(CHUNK)
                offset = 0
                while offset < size:
                    check_cancelled()
                    length = min(CHUNK, size - offset)
                    if stream:
                        view[:length] = stream(length)
                    written = os.pwritev(fd, [view[:length]], offset)
                    if written <= 0:
                        raise EraseFailed(f"short write at offset {offset}")
                    offset += written
                    progress((index + offset / size) / len(passes))
                os.fsync(fd)
    except OSError as exc:
        raise EraseFailed(f"overwrite failed: {exc}") from None
    finally:
        buf.close()
        os.close(fd)
    return f"overwritten ({iterations} random pass(es){', zeroed' if zeroize else ''})"
