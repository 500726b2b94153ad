"""The head of an image: its first bytes, read before the disk is touched.

``open_image`` connects and reads up to ``formats.STREAM_HEAD`` bytes into the
input pool's buffers.  Inspection reads them (through a private inflater when
the image is compressed); the stream then sends those same buffers on first,
so no byte is downloaded twice.
"""

from __future__ import annotations

import threading

from agent.errors import ImageDownloadError, InvalidImage
from agent.imaging import decompress, formats, plumbing
from agent.imaging.source import HTTPSource, RestartFromZero

# 4 x 2 MiB in flight kept throughput level with 4 x 4 MiB on this machine while
# holding the agent's peak RSS near 62 MiB (bench/stream.py)
IN_BUFFERS = 4


class OpenedImage:
    """An image whose first bytes have been received, and the input pool holding them."""

    def __init__(self, source: HTTPSource, pool: plumbing.Pool,
                 firsts: list[plumbing.Buffer], compression: str | None) -> None:
        self.source = source
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
        want = min(offset + length, formats.STREAM_HEAD)
        chunk = bytearray(256 << 10)
        while len(self._head) < want and not self._exhausted:
            try:
                n = self._inflater.readinto(memoryview(chunk))
            except InvalidImage:
                n = 0  # the head may end mid-stream; the full pass judges the image
            self._head += chunk[:n]
            self._exhausted = n < len(chunk)
        return bytes(self._head[offset:offset + length])


def open_image(source: HTTPSource, peek: int = formats.STREAM_HEAD) -> OpenedImage:
    """Connect and read up to ``peek`` bytes; nothing is written yet."""
    source.open()
    for _ in range(source.retries + 1):
        try:
            return read_start(source, peek)
        except RestartFromZero:
            continue  # the server cannot resume; peek again from byte 0
    raise ImageDownloadError(f"{source.url} kept restarting from byte 0 while the image "
                             "head was read")


def read_start(source: HTTPSource, peek: int = plumbing.BUFFER_SIZE) -> OpenedImage:
    """Read the first buffers of a connected source (again, after it restarted at 0)."""
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
    return OpenedImage(source, pool, firsts, compression)
