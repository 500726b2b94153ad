"""The byte path, in one place: URL → hash → decompress → disk.

    source (HTTP, resumable)      agent/imaging/source.py
      → hash (of the bytes as served, which is what the checksum covers)
      → decompress (sniffed by magic)  agent/imaging/decompress.py
      → writer (head last, zero runs punched)  agent/imaging/writer.py

Each arrow is a bounded hand-off between threads (agent/imaging/plumbing.py),
so receiving, hashing, decompressing and writing overlap.  Nothing is
written until the first bytes have been inspected; the first MiB reaches the
disk only after the checksum matched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError, ImageChecksumError, ImageDownloadError, InvalidImage
from agent.imaging import decompress, plumbing
from agent.imaging.checksum import Expected
from agent.imaging.source import HTTPSource, RestartFromZero
from agent.imaging.writer import DeviceWriter
from agent.progress import Progress

LOG = logging.getLogger(__name__)
LOG_EVERY_S = 5.0
# 4 x 2 MiB in flight kept throughput level with 4 x 4 MiB on this machine while
# holding the agent's peak RSS near 62 MiB (bench/stream.py)
IN_BUFFERS = 4
# decompressed output is produced in one thread and written in another; two
# 1 MiB buffers keep both busy (measured) at a quarter of the input's memory
OUT_BUFFERS = 2
OUT_BUFFER_SIZE = 1 << 20
# format inspection needs this much of the head (vhdx metadata sits at 3 MiB)
PEEK_BYTES = 8 << 20


@dataclasses.dataclass
class StreamOptions:
    direct: bool = True
    zero_skip: bool = True
    verify_after_write: bool = False
    checksum_retries: int = 1
    # called with the opened image before anything is written; raises to refuse
    inspect_head: Callable[[OpenedImage], None] | None = None
    # where the bytes go: at ``base`` on the device, at most ``limit`` bytes,
    # and whether the first MiB is held back until the checksum has passed
    base: int = 0
    limit: int | None = None
    hold_head: bool = True
    # runs after the checksum passed and the body is on disk, before the head
    after_body: Callable[[DeviceWriter], None] | None = None


@dataclasses.dataclass
class StreamReport:
    device: str
    image_bytes: int          # bytes written to the device (decompressed size)
    received_bytes: int
    compression: str | None
    digest: str
    algo: str
    seconds: float
    write_path: str
    zero_path: str
    zeroed_bytes: int
    resumes: int
    restarts: int
    verified_after_write: bool
    image_format: str | None = None
    conversion: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Attempt:
    """One pass over the image from byte 0; a server restart starts a new one."""

    def __init__(self, source: HTTPSource, writer: DeviceWriter, expected: Expected,
                 opened: OpenedImage) -> None:
        self.source = source
        self.writer = writer
        self.hasher = expected.new()
        self.firsts = list(opened.firsts)
        self.pool = opened.pool
        self.kind = opened.compression
        self.decompressor: decompress.Decompressor | decompress.ExternalXz | None = None

    def run(self, stages: plumbing.Stages) -> None:
        abort = stages.abort
        to_hash = plumbing.Pipe(abort)
        to_next = plumbing.Pipe(abort)

        def receive() -> None:
            # the buffers read for inspection go first, then the rest of the stream
            queued = self.firsts
            while True:
                if queued:
                    buf = queued.pop(0)
                else:
                    buf = self.pool.get(abort)
                    plumbing.fill(self.source.readinto, buf)
                # once handed on, the buffer belongs to the next stage, which may
                # already have emptied and recycled it: judge the end from a copy
                n = buf.n
                if n:
                    to_hash.put(buf)
                else:
                    self.pool.put(buf)
                if n < len(buf.view):
                    break
            to_hash.close()

        def hash_stage() -> None:
            while (buf := to_hash.get()) is not None:
                self.hasher.update(buf.data)
                to_next.put(buf)
            to_next.close()

        def write_from(pipe: plumbing.Pipe, pool: plumbing.Pool) -> None:
            while (buf := pipe.get()) is not None:
                self.writer.write(buf.data)
                pool.put(buf)

        stages.start("receive", receive)
        stages.start("hash", hash_stage)
        if self.kind is None:
            stages.start("write", lambda: write_from(to_next, self.pool))
            return
        out_pool = plumbing.Pool(OUT_BUFFERS, OUT_BUFFER_SIZE)
        to_write = plumbing.Pipe(abort)
        reader = _PipeReader(to_next, self.pool)
        self.decompressor = decompress.open_decompressor(self.kind, reader.read)

        def decompress_stage() -> None:
            try:
                while True:
                    buf = out_pool.get(abort)
                    n = buf.n = self.decompressor.readinto(buf.view)
                    if n:
                        to_write.put(buf)       # the writer owns buf from here on
                    else:
                        out_pool.put(buf)
                    if n < len(buf.view):
                        break
                # the decompressor saw its end; so must the stream, or the stages
                # upstream would wait forever for a reader that is gone
                if reader.read(1):
                    raise InvalidImage(f"{self.kind} image has data after the end of the "
                                       "compressed stream")
            finally:
                close = getattr(self.decompressor, "close", None)
                if close is not None:
                    close()
            to_write.close()

        stages.start("decompress", decompress_stage)
        stages.start("write", lambda: write_from(to_write, out_pool))


class _PipeReader:
    """``read(n)`` over buffers arriving through a pipe (feeds the decompressor)."""

    def __init__(self, pipe: plumbing.Pipe, pool: plumbing.Pool) -> None:
        self._pipe = pipe
        self._pool = pool
        self._buf: plumbing.Buffer | None = None
        self._pos = 0
        self._ended = False

    def read(self, n: int) -> bytes:
        while not self._ended:
            if self._buf is not None and self._pos < self._buf.n:
                end = min(self._buf.n, self._pos + n)
                data = bytes(self._buf.view[self._pos:end])
                self._pos = end
                return data
            if self._buf is not None:
                self._pool.put(self._buf)
                self._buf = None
            self._buf = self._pipe.get()
            self._pos = 0
            if self._buf is None:
                self._ended = True
        return b""


class OpenedImage:
    """The first bytes of an image, read before the disk is touched."""

    def __init__(self, pool: plumbing.Pool, firsts: list[plumbing.Buffer],
                 compression: str | None) -> None:
        self.pool = pool
        self.firsts = firsts
        self.compression = compression
        self._head = bytearray()        # decompressed head, grown on demand
        self._inflater: decompress.Decompressor | None = None
        self._fed = 0
        self._exhausted = False

    def _raw(self, offset: int, length: int) -> bytes:
        out = bytearray()
        pos = 0
        for buf in self.firsts:
            if offset < pos + buf.n and offset + length > pos:
                lo = max(offset, pos) - pos
                hi = min(offset + length, pos + buf.n) - pos
                out += buf.view[lo:hi]
            pos += buf.n
        return bytes(out)

    def _feed(self, n: int) -> bytes:
        data = self._raw(self._fed, n)
        self._fed += len(data)
        return data

    def drop_head(self) -> None:
        """Inspection is over: free the inflated head and its decompressor."""
        self._head = bytearray()
        self._inflater = None

    def read_at(self, offset: int, length: int) -> bytes:
        """Random access to the (decompressed) head, for format inspection."""
        if self.compression is None:
            return self._raw(offset, length)
        if self._inflater is None:
            self._inflater = decompress.Decompressor(self.compression, self._feed)
        want = min(offset + length, PEEK_BYTES)
        chunk = bytearray(256 << 10)
        while len(self._head) < want and not self._exhausted:
            try:
                n = self._inflater.readinto(memoryview(chunk))
            except InvalidImage:
                n = 0  # the head may end mid-stream; the full pass judges the image
            self._head += chunk[:n]
            self._exhausted = n < len(chunk)
        return bytes(self._head[offset:offset + length])


def open_image(source: HTTPSource, peek: int = PEEK_BYTES) -> OpenedImage:
    """Connect and read up to ``peek`` bytes; nothing is written yet."""
    source.open()
    for _ in range(source.retries + 1):
        try:
            return _read_firsts(source, peek)
        except RestartFromZero:
            continue  # the server cannot resume; peek again from byte 0
    raise ImageDownloadError(f"{source.url} kept restarting from byte 0 while the image "
                             "head was read")


def _read_firsts(source: HTTPSource, peek: int = plumbing.BUFFER_SIZE) -> OpenedImage:
    pool = plumbing.Pool(IN_BUFFERS)
    never = threading.Event()
    firsts: list[plumbing.Buffer] = []
    while sum(b.n for b in firsts) < peek and len(firsts) < IN_BUFFERS:
        buf = pool.get(never)
        plumbing.fill(source.readinto, buf)
        firsts.append(buf)
        if buf.n < len(buf.view):
            break
    compression = decompress.sniff(bytes(firsts[0].data[:8])) if firsts else None
    return OpenedImage(pool, firsts, compression)


def stream_image(source: HTTPSource, device: str, expected: Expected, *,
                 progress: Progress | None = None,
                 cancel_check: Callable[[], None] = lambda: None,
                 options: StreamOptions | None = None,
                 opened: OpenedImage | None = None) -> StreamReport:
    """Write the image behind ``source`` onto ``device``; raise with the disk wiped."""
    opts = options or StreamOptions()
    progress = progress or Progress()
    started = time.monotonic()
    if opened is None:
        progress.update(phase="connect", unit="bytes")
        opened = open_image(source)
        if opts.inspect_head is not None:
            opts.inspect_head(opened)   # raises before the disk is touched
    opened.drop_head()

    writer = DeviceWriter(device, direct=opts.direct, zero_skip=opts.zero_skip,
                          hash_output="sha256" if opts.verify_after_write else None,
                          base=opts.base, hold_head=opts.hold_head, limit=opts.limit)
    attempt: _Attempt | None = None
    try:
        writer.begin()
        checksum_failures = 0
        while True:
            attempt = _Attempt(source, writer, expected, opened)
            stages = plumbing.Stages()
            last_log = [time.monotonic()]

            def tick(a: _Attempt = attempt, stamp: list[float] = last_log) -> None:
                cancel_check()
                _report(progress, source, a, writer, stamp)

            try:
                progress.update(phase="write", total=source.total)
                attempt.run(stages)
                stages.join(tick)
            except RestartFromZero:
                writer.rewind()
                opened = _read_firsts(source)
                continue
            _report(progress, source, attempt, writer, last_log, force=True)
            try:
                expected.check(attempt.hasher.hexdigest())
            except ImageChecksumError:
                checksum_failures += 1
                if checksum_failures > opts.checksum_retries:
                    raise
                LOG.warning("checksum mismatch; downloading the whole image once more")
                writer.rewind()     # wiped again before a single byte of the next pass
                source.reopen()
                opened = _read_firsts(source)
                continue
            break
        progress.update(phase="sync", done=0, total=None)
        writer.finish_body()
        if opts.after_body is not None:
            opts.after_body(writer)     # e.g. qemu-img converting the staged image
        writer.write_head()
        verified = False
        if opts.verify_after_write:
            progress.update(phase="verify", done=0, total=writer.position)
            verify_device(device, writer.position, writer.output_digest or "", progress,
                          cancel_check)
            verified = True
    except BaseException as exc:
        state = writer.abort()
        LOG.error("image write to %s failed: %s; %s", device, exc, state)
        if isinstance(exc, AgentError):
            exc.details = f"{exc.details}; {state}"
        raise
    finally:
        writer.close()
        source.close()
    return StreamReport(
        device=device, image_bytes=writer.position, received_bytes=source.received,
        compression=attempt.kind if attempt else None, digest=attempt.hasher.hexdigest()
        if attempt else "", algo=expected.algo, seconds=round(time.monotonic() - started, 3),
        write_path="O_DIRECT" if opts.direct else "buffered",
        zero_path=writer.zero_path if opts.zero_skip else "write",
        zeroed_bytes=writer.bytes_zeroed, resumes=source.resumes, restarts=source.restarts,
        verified_after_write=verified)


STALL_S = 120.0


def _report(progress: Progress, source: HTTPSource, attempt: _Attempt, writer: DeviceWriter,
            last_log: list[float], force: bool = False) -> None:
    progress.update(done=source.received, total=source.total,
                    bytes_received=source.received, bytes_written=writer.position,
                    compression=attempt.kind)
    now = time.monotonic()
    moved = (source.received, writer.position)
    if len(last_log) < 3 or last_log[1] != moved:
        last_log[1:] = [moved, now, False]
    elif not last_log[3] and now - last_log[2] > STALL_S:
        # a stuck stage is otherwise invisible: say where every thread waits, once
        last_log[3] = True
        LOG.warning("image stream made no progress for %.0fs; thread stacks:\n%s",
                    now - last_log[2], _thread_stacks())
    if force or now - last_log[0] >= LOG_EVERY_S:
        last_log[0] = now
        snap = progress.snapshot()
        LOG.info("image: received %d of %s bytes, written %d, %.1f MB/s",
                 source.received, source.total or "?", writer.position,
                 (snap.get("rate") or 0) / 1e6)


def _thread_stacks() -> str:
    import sys
    import traceback
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


def verify_device(device: str, length: int, digest: str, progress: Progress,
                  cancel_check: Callable[[], None]) -> None:
    """Re-read what was written with O_DIRECT, so the page cache cannot answer."""
    h = hashlib.sha256()
    buf = plumbing.Buffer(plumbing.BUFFER_SIZE)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        done = 0
        while done < length:
            cancel_check()
            want = min(len(buf.view), length - done)
            aligned = (want + 4095) // 4096 * 4096
            n = os.preadv(fd, [buf.view[:aligned]], done)
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
