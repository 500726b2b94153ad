"""Decompress stage: chosen by magic bytes, strict about truncation and trailing garbage."""

from __future__ import annotations

import bz2
import io
import lzma
import subprocess
import zlib
from collections.abc import Callable
from typing import IO, Any, cast

import zstandard

from agent.errors import InvalidImage

MAGIC = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
]
READ_SIZE = 256 << 10


def sniff(head: bytes) -> str | None:
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def library_decompressor(kind: str) -> Any:
    """A fresh streaming decompressor from the library for ``kind`` (gzip, xz, bzip2)."""
    if kind == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    raise ValueError(kind)


class ZstdFrameTracker:
    """Walks zstd frame and block headers to know whether input ended on a frame boundary.

    zstandard's stream reader bounds memory but says nothing when the input
    stops mid-frame; walking the 3-byte block headers is cheap and tells.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0          # payload bytes to pass over
        self._state = "magic"
        self._checksum = False
        self._header_len = 0
        self.frames = 0

    @property
    def at_boundary(self) -> bool:
        return self._state == "magic" and self._skip == 0 and not self._buf

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            need = self._need()
            take = min(need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == need:
                self._advance(bytes(self._buf))

    def _need(self) -> int:
        fixed = {"magic": 4, "fhd": 1, "skipsize": 4, "block": 3, "checksum": 4}
        return fixed.get(self._state) or self._header_len

    def _advance(self, got: bytes) -> None:
        self._buf.clear()
        state = self._state
        if state == "magic":
            magic = int.from_bytes(got, "little")
            if magic == 0xFD2FB528:
                self._state = "fhd"
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state = "skipsize"
            else:
                raise InvalidImage("zstd image has trailing garbage after the end of the "
                                   "compressed data")
        elif state == "skipsize":
            self._skip = int.from_bytes(got, "little")
            self._state = "magic"
            self.frames += 1
        elif state == "fhd":
            fhd = got[0]
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            self._header_len = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self._state = "rest" if self._header_len else "block"
        elif state == "rest":
            self._state = "block"
        elif state == "block":
            header = int.from_bytes(got, "little")
            last, btype, size = header & 1, (header >> 1) & 3, header >> 3
            self._skip = 1 if btype == 1 else size
            if last:
                self._state = "checksum" if self._checksum else "magic"
                if not self._checksum:
                    self.frames += 1
        elif state == "checksum":
            self._state = "magic"
            self.frames += 1


class Decompressor:
    """Pull-based: ``readinto(buf)`` fills ``buf`` from ``read(n)`` of compressed input.

    Output per call is bounded (max_length), so a 4 MiB input that inflates
    to gigabytes of zeros never sits in memory at once.  Concatenated
    members/streams/frames of the same kind are accepted, as the tools do;
    anything else after the end, or input ending mid-stream, is an error.
    """

    def __init__(self, kind: str, read: Callable[[int], bytes]) -> None:
        self.kind = kind
        self._read = read
        self._pending = b""      # compressed bytes not yet fed
        self._eof_input = False
        self.produced = 0
        # zlib, bz2 and lzma decompress objects, or zstandard's reader: no common type
        self._obj: Any
        if kind == "zstd":
            self._tracker = ZstdFrameTracker()
            self._tap = _Tap(read, self._tracker)
            # zstandard only ever calls .read() on its source
            source = cast(IO[bytes], self._tap)
            self._obj = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
                source, read_size=READ_SIZE, read_across_frames=True)
        else:
            self._obj = library_decompressor(kind)

    def _more_input(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._eof_input:
            return b""
        data = self._read(READ_SIZE)
        if not data:
            self._eof_input = True
        return bytes(data)

    def _stream_ended(self) -> bool:
        return self._obj.eof

    def _after_end(self) -> None:
        """Called when one member ended: accept another member, or demand the end."""
        rest = self._obj.unused_data or self._more_input()
        while self.kind == "xz" and rest and not rest.strip(b"\0"):
            rest = self._more_input()      # xz allows null stream padding
        if self.kind == "xz":
            rest = rest.lstrip(b"\0")
        if not rest:
            self._obj = None
            return
        if sniff(rest) == self.kind:
            self._obj = library_decompressor(self.kind)
            self._pending = rest
            return
        raise InvalidImage(f"{self.kind} image has trailing garbage after the end of the "
                           "compressed data")

    def _decompress(self, data: bytes, limit: int) -> bytes:
        if self.kind == "gzip":
            out = self._obj.decompress(data, limit)
            self._pending = self._obj.unconsumed_tail + self._pending
            return out
        return self._obj.decompress(data, max_length=limit)

    def _readinto_zstd(self, buf: memoryview) -> int:
        try:
            got = 0
            while got < len(buf):
                n = self._obj.readinto(buf[got:])
                if not n:
                    break
                got += n
        except zstandard.ZstdError as exc:
            raise InvalidImage(f"zstd image is corrupt: {exc}") from None
        if got < len(buf) and not (self._tracker.at_boundary and self._tracker.frames):
            raise InvalidImage("zstd image is truncated: the compressed data ends inside "
                               "a frame")
        self.produced += got
        return got

    def readinto(self, buf: memoryview) -> int:
        if self.kind == "zstd":
            return self._readinto_zstd(buf)
        want = len(buf)
        got = 0
        while got < want and self._obj is not None:
            if self.kind in ("xz", "bzip2") and not self._obj.needs_input \
                    and not self._obj.eof:
                chunk = self._obj.decompress(b"", max_length=want - got)
            elif self.kind == "gzip" and self._pending and not self._obj.eof:
                data, self._pending = self._pending, b""
                chunk = self._decompress(data, want - got)
            elif self._stream_ended():
                self._after_end()
                continue
            else:
                data = self._more_input()
                if not data:
                    if self._stream_ended():
                        self._after_end()
                        continue
                    raise InvalidImage(f"{self.kind} image is truncated: the compressed "
                                       "data ends before the end of the stream")
                chunk = self._decompress(data, want - got)
            if chunk:
                buf[got:got + len(chunk)] = chunk
                got += len(chunk)
                self.produced += len(chunk)
        return got


class _Tap:
    """The file-like source zstandard pulls from; every byte also feeds the tracker.

    It must not point back at its Decompressor: the zstandard reader between
    them is invisible to the garbage collector, so that cycle would never be
    freed and every image would leak its buffers and its zstd context.
    """

    def __init__(self, read: Callable[[int], bytes], tracker: ZstdFrameTracker) -> None:
        self._read = read
        self._tracker = tracker

    def read(self, n: int = -1) -> bytes:
        data = self._read(READ_SIZE if n is None or n < 0 else n)
        self._tracker.feed(data)
        return data


class ExternalXz:
    """xz through the ``xz`` tool, which decompresses multi-block files on every core.

    Python's lzma module is single-threaded; ``xz -T0`` is not.  The tool is as
    strict as we are: truncation and trailing garbage make it exit non-zero.
    """

    kind = "xz"

    def __init__(self, read: Callable[[int], bytes]) -> None:
        import threading

        from agent import tools
        self._read = read
        self._proc = tools.popen("xz", "-d", "-c", "-q", "-T0", stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.produced = 0
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="xz-feed", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None        # popen'd with stdin=PIPE
        try:
            while data := self._read(READ_SIZE):
                stdin.write(data)
        except BrokenPipeError:
            pass  # xz stopped early; its exit status says why
        except BaseException as exc:  # noqa: BLE001 - e.g. the pipeline aborting
            self._feed_error = exc
            self._proc.kill()
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def readinto(self, buf: memoryview) -> int:
        got = 0
        # popen'd with stdout=PIPE and no text mode: a buffered binary reader
        stdout = cast(io.BufferedReader, self._proc.stdout)
        while got < len(buf):
            n = stdout.readinto(buf[got:])
            if not n:
                self._finish()
                break
            got += n
        self.produced += got
        return got

    def _finish(self) -> None:
        self._feeder.join()
        rc = self._proc.wait()
        if self._feed_error is not None:
            raise self._feed_error
        if rc != 0:
            stderr = self._proc.stderr
            err = stderr.read().decode("utf-8", "replace").strip() if stderr else ""
            if "Unexpected end of input" in err:
                # xz says this both for a cut stream and for bytes after its end
                raise InvalidImage("xz image is truncated or has trailing garbage: the "
                                   f"compressed data does not end cleanly ({err})")
            raise InvalidImage(f"xz image is corrupt or has trailing garbage: {err}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def open_decompressor(kind: str, read: Callable[[int], bytes]) -> Decompressor | ExternalXz:
    """The fastest strict decompressor available for ``kind``."""
    from agent import tools
    if kind == "xz" and tools.which("xz"):
        return ExternalXz(read)
    return Decompressor(kind, read)
