"""fio's JSON report, read as fio streams it, and the numbers the steps keep from it.

Run with ``--output-format=json --status-interval=N`` fio prints one full
report every N seconds and a final one at the end, interleaved with plain
notices (``fio: waiting for connection``).  Only the newest report is kept:
a day-long burn-in must not hold a day of reports in memory.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LOG = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2
NOTICE_LINES = 20

# errno values a network reader sees while its partner's listener is not up yet
NOT_LISTENING = {111, 110, 113, 101}     # refused, timed out, no route, unreachable


class ReportStream:
    """Fed fio's stdout line by line; ``latest`` is the newest complete report."""

    def __init__(self, on_report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._on_report = on_report
        self.latest: dict[str, Any] | None = None
        self.notices: collections.deque[str] = collections.deque(maxlen=NOTICE_LINES)

    def feed(self, line: str) -> None:
        if not self._buffer and not line.startswith("{"):
            if line.strip():
                self.notices.append(line.strip())
            return
        self._buffer.append(line)
        # a report ends with its top-level brace alone at the start of a line
        if line.rstrip("\n") != "}":
            return
        text = "".join(self._buffer)
        self._buffer = []
        try:
            report = json.loads(text)
        except ValueError:
            self.notices.append("fio printed a report that is not valid JSON")
            return
        if isinstance(report, dict):
            with self._lock:
                self.latest = report
            if self._on_report is not None:
                self._on_report(report)

    def jobs(self) -> list[Mapping[str, Any]]:
        with self._lock:
            report = self.latest
        found = report.get("jobs") if report else None
        return [j for j in found if isinstance(j, Mapping)] if isinstance(found, list) else []


def _num(section: Any, key: str) -> float:
    value = section.get(key) if isinstance(section, Mapping) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _direction(job: Mapping[str, Any], way: str) -> dict[str, Any]:
    section = job.get(way)
    return {"bytes": int(_num(section, "io_bytes")), "bw_bytes": int(_num(section, "bw_bytes")),
            "iops": round(float(_num(section, "iops")), 1),
            "runtime_ms": int(_num(section, "runtime"))}


def job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """The step result's numbers for one fio job (one disk, or one network direction)."""
    return {"read": _direction(job, "read"), "write": _direction(job, "write"),
            "error": int(_num(job, "error")), "verify_errors": int(_num(job, "total_err")),
            "first_error": int(_num(job, "first_error"))}


def moved(jobs: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(bytes read, bytes written) over ``jobs``."""
    read = written = 0
    for job in jobs:
        read += int(_num(job.get("read"), "io_bytes"))
        written += int(_num(job.get("write"), "io_bytes"))
    return read, written


def save_report(stream: ReportStream, path: str | None) -> None:
    """Write the final report where the operator asked (IPA's ``*_outputfile``)."""
    if path is None or stream.latest is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(stream.latest, f, indent=2)
            f.write("\n")
    except OSError as exc:
        # the burn-in itself passed; a log file we cannot write must not fail it
        LOG.warning("could not write the fio report to %s: %s", path, exc)
