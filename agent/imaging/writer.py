"""Sink stage: write an image onto a block device so a half-written disk never boots.

Order: wipe the MBR and both GPT copies; write everything but the image's
first MiB; let the caller finish verifying the checksum; write the first MiB
last; fsync.  On any failure ``abort`` wipes the partition tables again, so
the disk cannot boot a partial image; used as a context manager, the writer
does that itself when the block raises.  Zero runs are turned into
``fallocate(PUNCH_HOLE|KEEP_SIZE)``, which the kernel maps to a no-fallback
zero-out; devices that cannot do that get the zeros written.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import mmap
import os
from types import TracebackType

from agent.disk import blockdev
from agent.errors import AgentError, ImageWriteError, UnsafeDevice

LOG = logging.getLogger(__name__)
HEAD = 1 << 20
WIPE = 1 << 20
ZERO_GRAIN = 256 << 10
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int
_ZEROS = bytes(ZERO_GRAIN)
_ZEROS_ADDR = ctypes.cast(ctypes.c_char_p(_ZEROS), ctypes.c_void_p).value


def is_zero(data: memoryview) -> bool:
    """Whether ``data`` (at most ZERO_GRAIN bytes) holds only zeros.

    A data grain almost always shows a non-zero first or last byte; the rest
    are compared by memcmp, which ctypes calls without the GIL and without
    copying the grain (``bytes(grain) == zeros`` did both, for every grain).
    """
    n = len(data)
    if not n or data[0] or data[n - 1]:
        return not n
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(data))
    except TypeError:
        return bytes(data) == _ZEROS[:n]     # read-only: no address to hand to memcmp
    return _libc.memcmp(addr, _ZEROS_ADDR, n) == 0


def punch(fd: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class DeviceWriter:
    def __init__(self, device: str, *, direct: bool = True, zero_skip: bool = True,
                 hash_output: str | None = None, base: int = 0, hold_head: bool = True,
                 limit: int | None = None) -> None:
        self.device = device
        self.base = base             # device offset of image byte 0 (staging areas)
        self.head_size = HEAD if hold_head else 0
        self.limit = limit
        # appended when the image outgrows ``limit`` (why there was no bigger place)
        self.limit_reason = ""
        self.direct = direct
        self.zero_skip = zero_skip
        self.position = 0            # bytes of image consumed
        self.bytes_written = 0       # bytes actually written (zero runs excluded)
        self.bytes_zeroed = 0
        self.zero_path = "punch-hole" if zero_skip else "write"
        self._head = bytearray()
        self._pending_zero: tuple[int, int] | None = None
        self._zero_buf: mmap.mmap | None = None
        self._out_hash = hashlib.new(hash_output) if hash_output else None
        flags = os.O_WRONLY | (os.O_DIRECT if direct else 0)
        self.fd = blockdev.open_exclusive(device, flags)
        self.plain_fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        self.size = blockdev.size_bytes(self.fd)
        self.sector = blockdev.logical_sector_size(self.fd)

    # -- phases -------------------------------------------------------------------------
    def begin(self) -> None:
        """Make the disk unbootable before the first image byte lands."""
        self._wipe_tables()

    def write(self, data: memoryview) -> None:
        n = len(data)
        if self._out_hash is not None:
            self._out_hash.update(data)
        start = self.position
        if start < self.head_size:
            take = min(self.head_size - start, n)
            self._head += data[:take]
            data = data[take:]
            start += take
        self.position += n
        if not len(data):
            return
        room = self.size - self.base if self.limit is None else self.limit
        if start + len(data) > room:
            raise ImageWriteError(f"the image is larger than the {room} bytes available on "
                                  f"{self.device}; write stopped at byte {start}"
                                  + (f"; {self.limit_reason}" if self.limit_reason else ""))
        self._write_body(self.base + start, data)

    def pad(self, alignment: int) -> int:
        """Zero-fill after the image up to ``alignment``; return the padded length.

        qemu-img reads a staged image with direct I/O, which wants whole sectors.
        """
        padded = -(-self.position // alignment) * alignment
        if padded > self.position:
            os.pwrite(self.plain_fd, bytes(padded - self.position), self.base + self.position)
            os.fsync(self.plain_fd)
        return padded

    def rewind(self) -> None:
        """The stream restarts at byte 0: wipe again, then forget the held head.

        The pass that ended wrote the image's body, and with it the image's
        backup GPT at the image's end; left there, a kill during the next pass
        would leave a disk that firmware may recover a table from.
        """
        self._pending_zero = None
        self._wipe_tables(extra_end=self.base + self.position)
        self.position = 0
        self._head.clear()

    def finish_body(self) -> None:
        """Flush the body (everything but the head) to stable storage."""
        self._flush_zero()
        os.fsync(self.fd)
        os.fsync(self.plain_fd)

    def write_head(self) -> None:
        """Last: the first MiB, which makes the disk bootable."""
        if self._head:
            self._pwrite_any(self.base, memoryview(self._head))
        os.fsync(self.fd)
        os.fsync(self.plain_fd)

    @property
    def output_digest(self) -> str | None:
        return self._out_hash.hexdigest() if self._out_hash else None

    def abort(self) -> str:
        """Wipe the tables again (both ends of disk and image); say what was done."""
        try:
            self._wipe_tables(extra_end=self.base + self.position)
            os.fsync(self.plain_fd)
            return (f"{self.device} was left without a partition table (first and last MiB "
                    "wiped) and will not boot")
        except OSError as exc:
            LOG.error("could not wipe %s after a failed write: %s", self.device, exc)
            return (f"WARNING: {self.device} may hold a partial image: wiping its partition "
                    f"tables failed ({exc})")

    def close(self) -> None:
        for fd in (self.fd, self.plain_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> DeviceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """On an error, wipe what was written and add that to the error; always close.

        A normal exit does nothing more: the caller writes the head explicitly.
        """
        try:
            if exc is not None:
                state = self.abort()
                LOG.error("image write to %s failed: %s; %s", self.device, exc, state)
                if isinstance(exc, AgentError):
                    exc.details = f"{exc.details}; {state}"
        finally:
            self.close()

    # -- internals ------------------------------------------------------------------------
    def _wipe_tables(self, extra_end: int | None = None) -> None:
        # a GPT image's backup header sits at the end of the *image*
        ends = [extra_end] if extra_end and extra_end < self.size else []
        blockdev.zero_edges(self.plain_fd, self.size, edge=WIPE, extra_ends=ends)

    def _write_body(self, start: int, data: memoryview) -> None:
        if not self.zero_skip:
            self._pwrite_any(start, data)
            return
        n = len(data)
        i = 0
        grain = ZERO_GRAIN
        # zero detection works on grain-aligned device offsets so punched
        # ranges stay aligned; the unaligned lead-in is written as is
        lead = (-start) % grain
        if lead:
            lead = min(lead, n)
            self._flush_zero()
            self._pwrite_any(start, data[:lead])
            i = lead
        run_start = i
        while i < n:
            j = min(i + grain, n)
            if j - i == grain and is_zero(data[i:j]):
                if run_start < i:
                    self._flush_zero()
                    self._pwrite_any(start + run_start, data[run_start:i])
                self._add_zero(start + i, grain)
                run_start = j
            i = j
        if run_start < n:
            self._flush_zero()
            self._pwrite_any(start + run_start, data[run_start:n])

    def _add_zero(self, offset: int, length: int) -> None:
        if self._pending_zero and self._pending_zero[0] + self._pending_zero[1] == offset:
            self._pending_zero = (self._pending_zero[0], self._pending_zero[1] + length)
        else:
            self._flush_zero()
            self._pending_zero = (offset, length)

    def _flush_zero(self) -> None:
        if not self._pending_zero:
            return
        offset, length = self._pending_zero
        self._pending_zero = None
        if self.zero_path == "punch-hole":
            try:
                punch(self.fd, offset, length)
                self.bytes_zeroed += length
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
                    raise
                LOG.info("%s cannot zero ranges without a fallback (%s); writing zeros",
                         self.device, exc.strerror)
                self.zero_path = "write"
        if self._zero_buf is None:
            self._zero_buf = mmap.mmap(-1, ZERO_GRAIN)
        zero = memoryview(self._zero_buf)
        for off in range(offset, offset + length, ZERO_GRAIN):
            self._pwrite_any(off, zero[:min(ZERO_GRAIN, offset + length - off)])

    def _pwrite_any(self, offset: int, data: memoryview) -> None:
        """pwrite through O_DIRECT when aligned, else through the buffered fd."""
        n = len(data)
        aligned = n - n % self.sector if self.direct else n
        if self.direct and (offset % self.sector or not _aligned(data)):
            aligned = 0
        done = 0
        try:
            while done < aligned:
                done += os.pwrite(self.fd, data[done:aligned], offset + done)
            while done < n:
                done += os.pwrite(self.plain_fd, data[done:n], offset + done)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ImageWriteError(f"{self.device} is full at byte {offset + done}: the "
                                      "image is larger than the disk") from None
            raise ImageWriteError(f"writing {self.device} at byte {offset + done} failed: "
                                  f"{exc.strerror}") from None
        self.bytes_written += n


def _aligned(data: memoryview) -> bool:
    # the address of a memoryview is only reachable through ctypes
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(data))
    except TypeError:
        return False  # read-only buffer: use the buffered path
    return addr % 4096 == 0


def check_writable(device: str) -> None:
    if not os.access(device, os.W_OK):
        raise UnsafeDevice(f"{device} is not writable by the agent")
