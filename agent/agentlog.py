"""Logging setup, with an in-memory ring of recent lines for log collection."""

from __future__ import annotations

import collections
import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RingHandler(logging.Handler):
    """Keeps the last ``capacity`` formatted records, at most ``max_chars`` of text in all.

    The logs command ships them.  The character bound keeps a run of long lines
    (tracebacks, debug dumps) from holding megabytes for the life of the process;
    log collection keeps only a few MiB of each item anyway (``log_cap_bytes``
    shared among the items).
    """

    def __init__(self, capacity: int = 20000, max_chars: int = 4 << 20) -> None:
        super().__init__()
        self._lines: collections.deque[str] = collections.deque()
        self._capacity = capacity
        self._max_chars = max_chars
        self._chars = 0
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() already holds self.lock around emit()
        try:
            line = self.format(record)[:self._max_chars]
        except Exception:  # noqa: BLE001 - logging must never raise
            return
        self._lines.append(line)
        self._chars += len(line)
        while len(self._lines) > self._capacity or self._chars > self._max_chars:
            self._chars -= len(self._lines.popleft())

    def text(self) -> str:
        self.acquire()
        try:
            return "\n".join(self._lines) + "\n"
        finally:
            self.release()


RING = RingHandler()


def setup(debug: bool = False, log_file: str | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stream)
    root.addHandler(RING)
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(fh)
    # cheroot and urllib3 are chatty at debug level
    logging.getLogger("urllib3").setLevel(logging.INFO)
