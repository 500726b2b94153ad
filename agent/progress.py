"""Live progress for a running command.

The runner hands one ``Progress`` to each async command.  Work calls
``update(phase=..., done=..., total=...)`` or ``advance(n)`` from any thread;
readers take ``snapshot()``.  Rate comes from a short sliding window so a
stall shows up within seconds instead of being averaged away.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from typing import Any

WINDOW_S = 5.0


def _json_safe(value: Any) -> Any:
    # snapshots are served while the command runs; one odd value must not turn
    # GET /v1/commands/ into a 500
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


class Progress:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._done = 0
        self._total: int | None = None
        self._unit = "bytes"
        self._extra: dict[str, Any] = {}
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._phase_started = clock()
        self.updated_at = 0.0

    def update(self, phase: str | None = None, done: int | None = None,
               total: int | None = None, unit: str | None = None, **extra: Any) -> None:
        with self._lock:
            now = self._clock()
            if phase is not None and phase != self._phase:
                self._phase = phase
                self._done = 0
                self._total = None
                self._samples.clear()
                self._phase_started = now
            if unit is not None:
                self._unit = unit
            if total is not None:
                self._total = total
            if done is not None:
                self._done = done
            self._extra.update({k: _json_safe(v) for k, v in extra.items()})
            self._sample(now)

    def advance(self, amount: int) -> None:
        with self._lock:
            self._done += amount
            self._sample(self._clock())

    def _sample(self, now: float) -> None:
        self.updated_at = now
        if self._samples and now - self._samples[-1][0] < 0.2:
            return
        self._samples.append((now, self._done))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW_S:
            self._samples.popleft()

    @property
    def started(self) -> bool:
        return self._phase is not None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            rate = None
            if self._samples:
                t0, d0 = self._samples[0]
                span = now - t0
                if span >= 0.2:
                    rate = max(0.0, (self._done - d0) / span)
            eta = None
            if rate and self._total is not None and self._total >= self._done:
                eta = round((self._total - self._done) / rate, 1)
            snap = {"phase": self._phase, "done": self._done, "total": self._total,
                    "unit": self._unit, "rate": round(rate, 1) if rate is not None else None,
                    "eta_s": eta, "elapsed_s": round(now - self._phase_started, 1)}
            snap.update(self._extra)
            return snap
