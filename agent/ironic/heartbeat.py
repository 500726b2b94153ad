"""The heartbeat loop: tell the controller where the agent is and that it is alive.

Timing (reference §8.5): the first heartbeat goes out at once; after a
success the next is due in ``heartbeat_timeout × U(0.3, 0.6)``, after any
failure in ``5 × U(1, 2)`` seconds.  When an async command ends a forced
heartbeat goes out as soon as 5 s have passed since the previous one, so the
conductor notices quickly.  The loop wakes at least every 5 s so a stop or a
changed setting is seen promptly.  ``Schedule`` holds the arithmetic with an
injected clock and random source so it is tested without sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.ironic.http import ControllerClient, HeartbeatRejected

LOG = logging.getLogger(__name__)

MAX_SLEEP = 5.0
FORCED_MIN_GAP = 5.0
ERROR_BASE = 5.0

Uniform = Callable[[float, float], float]


def next_interval(heartbeat_timeout: float, ok: bool,
                  uniform: Uniform = random.uniform) -> float:
    if ok:
        return heartbeat_timeout * uniform(0.3, 0.6)
    return ERROR_BASE * uniform(1.0, 2.0)


class Schedule:
    """When the next heartbeat is due, given what happened so far."""

    def __init__(self, now: float) -> None:
        self.next_at = now
        self.last_sent: float | None = None
        # counters, not a flag: a force that arrives while a heartbeat is in
        # flight must not be cleared by that heartbeat
        self.requested = 0
        self.served = 0

    @property
    def forced(self) -> bool:
        return self.requested > self.served

    def sent(self, now: float, ok: bool, heartbeat_timeout: float,
             uniform: Uniform = random.uniform, served: int | None = None) -> float:
        """Record a heartbeat; ``served`` is ``requested`` as seen when it started."""
        self.last_sent = now
        self.served = self.requested if served is None else served
        self.next_at = now + next_interval(heartbeat_timeout, ok, uniform)
        return self.next_at

    def force(self) -> None:
        self.requested += 1

    def due_at(self) -> float:
        if self.forced:
            earliest = -float("inf") if self.last_sent is None \
                else self.last_sent + FORCED_MIN_GAP
            return min(self.next_at, earliest)
        return self.next_at

    def is_due(self, now: float) -> bool:
        return now >= self.due_at()

    def sleep_for(self, now: float) -> float:
        return min(MAX_SLEEP, max(0.0, self.due_at() - now))


class Heartbeater:
    """Runs the schedule in a daemon thread until ``stopped`` is set."""

    def __init__(self, client: ControllerClient, node_uuid: str, callback_url: str,
                 config: Any, stopped: threading.Event, verify_ca: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 uniform: Uniform = random.uniform) -> None:
        self.client = client
        self.node_uuid = node_uuid
        self.callback_url = callback_url
        self.config = config
        self.verify_ca = verify_ca
        self.stopped = stopped
        self._clock = clock
        self._uniform = uniform
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.schedule = Schedule(clock())
        self.sent = 0
        self.failures = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="heartbeat", daemon=True)
        self._thread.start()

    def force(self, *_: Any) -> None:
        """Ask for an early heartbeat (hooked to the end of every async command)."""
        with self._lock:
            self.schedule.force()
        self._wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def beat(self) -> bool:
        """Send one heartbeat; never raises."""
        try:
            url = self.client.heartbeat(self.node_uuid, self.callback_url,
                                        self.config.agent_token, __version__, self.verify_ca)
        except HeartbeatRejected as exc:
            if exc.status == 409:
                LOG.warning("heartbeat refused with a conflict (node locked); retrying soon: "
                            "%s", exc)
            else:
                LOG.error("heartbeat rejected by the controller: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure
            LOG.error("heartbeat failed: %s: %s", type(exc).__name__, exc)
            return False
        LOG.debug("heartbeat accepted by %s", url)
        return True

    def run(self) -> None:
        LOG.info("heartbeating to %s as %s", self.client.preferred, self.callback_url)
        while not self.stopped.is_set():
            self._wake.clear()
            with self._lock:
                due = self.schedule.is_due(self._clock())
                seen = self.schedule.requested
            if due:
                ok = self.beat()
                self.sent += 1
                self.failures += 0 if ok else 1
                with self._lock:
                    self.schedule.sent(self._clock(), ok, self.config.heartbeat_timeout,
                                       self._uniform, served=seen)
            if self.stopped.is_set():
                break
            with self._lock:
                delay = self.schedule.sleep_for(self._clock())
            self._wake.wait(delay)
        LOG.info("heartbeats stopped")
