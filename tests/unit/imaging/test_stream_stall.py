"""The stream logs every thread's stack once when it stops making progress."""

from __future__ import annotations

import logging
import types

from agent.imaging import stream
from agent.progress import Progress


def test_stall_is_reported_once_with_thread_stacks(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(stream.time, "monotonic", lambda: now[0])
    source = types.SimpleNamespace(received=8 << 20, total=16 << 20)
    writer = types.SimpleNamespace(position=7 << 20)
    attempt = types.SimpleNamespace(kind="zstd")
    stamp = stream.StallWatch(logged_at=now[0])
    caplog.set_level(logging.WARNING, logger="agent.imaging.stream")
    for step in range(0, 400, 10):          # 400 s without a byte moving
        now[0] = 1000.0 + step
        stream._report(Progress(), source, attempt, writer, stamp)
    stalls = [r for r in caplog.records if "no progress" in r.getMessage()]
    assert len(stalls) == 1
    assert "test_stall_is_reported_once" in stalls[0].getMessage()   # our own stack
    source.received += 1                     # progress resets the watch
    caplog.clear()
    now[0] += 10
    stream._report(Progress(), source, attempt, writer, stamp)
    assert not [r for r in caplog.records if "no progress" in r.getMessage()]
