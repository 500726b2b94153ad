"""The byte path: an opened image's bytes → hash → [decompress] → writer.

    source (HTTP, resumable)           agent/imaging/source.py
      → head (first bytes, inspected)  agent/imaging/head.py
      → hash (of the bytes as served, which is what the checksum covers)
      → decompress (sniffed by magic)  agent/imaging/decompress.py
      → writer (head held back, zero runs punched)  agent/imaging/writer.py
        or → stage (memory or the disk's tail)      agent/imaging/staging.py
             → qemu-img                             agent/imaging/nonraw.py
      → head → verify                  agent/imaging/verify.py

This module runs the stages up to the writer and checks the checksum;
``deploy.stream_image`` composes the whole sequence and its failure policy.
Each arrow is a bounded hand-off between threads (agent/imaging/plumbing.py),
so receiving, hashing, decompressing and writing overlap.  Buffers go back to
the pool they came from once the last stage is done with them:

    image       input pool (head.IN_BUFFERS)     output pool (OUT_BUFFERS)
    raw         the writer returns them          -
    gzip/zstd   _PipeReader returns them         the writer returns them
    xz          _PipeReader returns them, via a  the writer returns them
                feeder thread into ``xz -T0``
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from agent.errors import ImageChecksumError, InvalidImage
from agent.imaging import decompress, head, plumbing
from agent.imaging.checksum import Expected
from agent.imaging.head import OpenedImage
from agent.imaging.source import HTTPSource, RestartFromZero
from agent.progress import Progress

LOG = logging.getLogger(__name__)
LOG_EVERY_S = 5.0
# a stream that moved no byte for this long logs where every thread waits
STALL_S = 120.0
# decompressed output is produced in one thread and written in another; two
# 1 MiB buffers keep both busy (measured) at a quarter of the input's memory
OUT_BUFFERS = 2
OUT_BUFFER_SIZE = 1 << 20


class Sink(Protocol):
    """Where the stream's bytes go: a ``writer.DeviceWriter`` or a ``staging.MemoryStage``."""

    device: str
    position: int
    direct: bool
    zero_skip: bool
    zero_path: str
    bytes_zeroed: int

    def write(self, data: memoryview) -> None: ...
    def rewind(self) -> None: ...
    def finish_body(self) -> None: ...


@dataclasses.dataclass
class StreamOptions:
    # performance
    direct: bool = True
    zero_skip: bool = True
    # safety: read the disk back; download again after a checksum mismatch
    verify_after_write: bool = False
    checksum_retries: int = 1
    # where the bytes go: at ``base`` on the device, at most ``limit`` bytes,
    # and whether the first MiB is held back until the checksum has passed
    base: int = 0
    limit: int | None = None
    hold_head: bool = True


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

    def __init__(self, source: HTTPSource, writer: Sink, expected: Expected,
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
        decompressor = self.decompressor = decompress.open_decompressor(self.kind, reader.read)

        def decompress_stage() -> None:
            try:
                while True:
                    buf = out_pool.get(abort)
                    n = buf.n = decompressor.readinto(buf.view)
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
                close = getattr(decompressor, "close", None)
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


def stream_body(opened: OpenedImage, writer: Sink, expected: Expected, *,
                progress: Progress | None = None,
                cancel_check: Callable[[], None] = lambda: None,
                checksum_retries: int = 1) -> StreamReport:
    """Stream the image into ``writer`` until its checksum passed; flush the body.

    The writer's held head is left for the caller to write.  On a restart from
    byte 0 or a checksum mismatch the writer is rewound (the disk wiped again)
    and the image is read once more.
    """
    progress = progress or Progress()
    source = opened.source
    started = time.monotonic()
    opened.drop_head()
    checksum_failures = 0
    while True:
        attempt = _Attempt(source, writer, expected, opened)
        stages = plumbing.Stages()
        watch = StallWatch(logged_at=time.monotonic())

        def tick(a: _Attempt = attempt, w: StallWatch = watch) -> None:
            cancel_check()
            _report(progress, source, a, writer, w)

        try:
            progress.update(phase="write", total=source.total)
            attempt.run(stages)
            stages.join(tick)
        except RestartFromZero:
            writer.rewind()
            opened = head.read_start(source)
            continue
        _report(progress, source, attempt, writer, watch, force=True)
        try:
            expected.check(attempt.hasher.hexdigest())
        except ImageChecksumError:
            checksum_failures += 1
            if checksum_failures > checksum_retries:
                raise
            LOG.warning("checksum mismatch; downloading the whole image once more")
            writer.rewind()     # wiped again before a single byte of the next pass
            source.reopen()
            opened = head.read_start(source)
            continue
        break
    progress.update(phase="sync", done=0, total=None)
    writer.finish_body()
    return StreamReport(
        device=writer.device, image_bytes=writer.position, received_bytes=source.received,
        compression=attempt.kind, digest=attempt.hasher.hexdigest(), algo=expected.algo,
        seconds=round(time.monotonic() - started, 3),
        write_path="O_DIRECT" if writer.direct else "buffered",
        zero_path=writer.zero_path if writer.zero_skip else "write",
        zeroed_bytes=writer.bytes_zeroed, resumes=source.resumes, restarts=source.restarts,
        verified_after_write=False)


@dataclasses.dataclass
class StallWatch:
    """When the stream last logged, and when it last moved a byte."""

    logged_at: float
    moved: tuple[int, int] | None = None    # (received, written) when last seen to change
    moved_at: float = 0.0
    warned: bool = False


def _report(progress: Progress, source: HTTPSource, attempt: _Attempt, writer: Sink,
            watch: StallWatch, force: bool = False) -> None:
    progress.update(done=source.received, total=source.total,
                    bytes_received=source.received, bytes_written=writer.position,
                    compression=attempt.kind)
    now = time.monotonic()
    moved = (source.received, writer.position)
    if watch.moved != moved:
        watch.moved, watch.moved_at, watch.warned = moved, now, False
    elif not watch.warned and now - watch.moved_at > STALL_S:
        # a stuck stage is otherwise invisible: say where every thread waits, once
        watch.warned = True
        LOG.warning("image stream made no progress for %.0fs; thread stacks:\n%s",
                    now - watch.moved_at, _thread_stacks())
    if force or now - watch.logged_at >= LOG_EVERY_S:
        watch.logged_at = now
        snap = progress.snapshot()
        LOG.info("image: received %d of %s bytes, written %d, %.1f MB/s",
                 source.received, source.total or "?", writer.position,
                 (snap.get("rate") or 0) / 1e6)


def _thread_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())
