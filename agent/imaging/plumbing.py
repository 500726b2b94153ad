"""Threads, bounded hand-offs and aligned buffers for the byte pipeline.

Each stage runs in its own thread so receiving, hashing, decompressing and
writing overlap on separate cores (hashlib, zlib, lzma, zstandard and the
read/write syscalls all release the GIL on large buffers).  Buffers are
page-aligned anonymous mmaps, so O_DIRECT writes need no extra copy, and a
fixed pool bounds memory whatever the image size.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Callable
from typing import Any

BUFFER_SIZE = 2 << 20
_END = object()


class Aborted(Exception):
    """Another stage failed; this one stops quietly."""


class Buffer:
    __slots__ = ("mem", "view", "n")

    def __init__(self, size: int) -> None:
        self.mem = mmap.mmap(-1, size)
        self.view = memoryview(self.mem)
        self.n = 0

    @property
    def data(self) -> memoryview:
        return self.view[:self.n]


class Pool:
    """A fixed set of buffers; ``get`` blocks until one is returned."""

    def __init__(self, count: int, size: int = BUFFER_SIZE) -> None:
        self.size = size
        self._free: queue.Queue[Buffer] = queue.Queue()
        for _ in range(count):
            self._free.put(Buffer(size))

    def get(self, abort: threading.Event) -> Buffer:
        while True:
            if abort.is_set():
                raise Aborted()
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue

    def put(self, buf: Buffer) -> None:
        buf.n = 0
        self._free.put(buf)


class Pipe:
    """A bounded hand-off between two stages; ``None`` from get() means the end."""

    def __init__(self, abort: threading.Event, depth: int = 2) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._abort = abort

    def put(self, item: Any) -> None:
        while True:
            if self._abort.is_set():
                raise Aborted()
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.put(_END)

    def get(self) -> Any:
        while True:
            if self._abort.is_set():
                raise Aborted()
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            return None if item is _END else item


class Stages:
    """Run stage functions in threads; the first real error aborts the rest."""

    def __init__(self) -> None:
        self.abort = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self.abort.set()

    def start(self, name: str, fn: Callable[[], None]) -> None:
        def body() -> None:
            try:
                fn()
            except Aborted:
                pass
            except BaseException as exc:  # noqa: BLE001 - surfaced by join()
                self.fail(exc)
        t = threading.Thread(target=body, name=f"pipeline-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def join(self, tick: Callable[[], None] | None = None, interval: float = 0.5) -> None:
        """Wait for every stage; ``tick`` runs periodically in the caller's thread."""
        for t in self._threads:
            while t.is_alive():
                t.join(interval)
                if tick is not None:
                    try:
                        tick()
                    except BaseException as exc:  # noqa: BLE001 - e.g. cancel
                        self.fail(exc)
        if self._error is not None:
            raise self._error


def fill(readinto: Callable[[memoryview], int], buf: Buffer) -> int:
    """Read until ``buf`` is full or the stream ends, so writes stay aligned."""
    view = buf.view
    total = 0
    while total < len(view):
        n = readinto(view[total:])
        if not n:
            break
        total += n
    buf.n = total
    return total
