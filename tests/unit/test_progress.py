"""Live progress: phases, counters, sliding-window rate and ETA (with a fake clock)."""

from __future__ import annotations

import json
import threading

from agent.progress import WINDOW_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fresh_progress_is_not_started() -> None:
    p = Progress(Clock())
    assert p.started is False
    snap = p.snapshot()
    assert snap["phase"] is None
    assert snap["done"] == 0
    assert snap["rate"] is None and snap["eta_s"] is None


def test_snapshot_has_the_documented_keys() -> None:
    p = Progress(Clock())
    p.update(phase="write", done=0, total=100, unit="bytes")
    assert {"phase", "done", "total", "unit", "rate", "eta_s"} <= set(p.snapshot())
    assert p.started is True


def test_rate_and_eta_follow_the_work() -> None:
    clock = Clock()
    p = Progress(clock)
    p.update(phase="write", done=0, total=1000)
    clock.now += 1.0
    p.advance(100)
    clock.now += 1.0
    p.advance(100)
    snap = p.snapshot()
    assert snap["done"] == 200
    assert snap["rate"] == 100.0
    assert snap["eta_s"] == 8.0
    assert snap["elapsed_s"] == 2.0


def test_rate_uses_a_sliding_window_so_a_stall_shows() -> None:
    clock = Clock()
    p = Progress(clock)
    p.update(phase="write", done=0, total=10**9)
    for _ in range(10):          # fast for 10 s
        clock.now += 1.0
        p.advance(1000)
    fast = p.snapshot()["rate"]
    assert fast == 1000.0
    for _ in range(int(WINDOW_S) + 2):   # then stalled
        clock.now += 1.0
        p.advance(0)
    assert p.snapshot()["rate"] == 0.0
    assert p.snapshot()["eta_s"] is None


def test_new_phase_resets_counters() -> None:
    clock = Clock()
    p = Progress(clock)
    p.update(phase="download", done=500, total=500)
    clock.now += 3
    p.update(phase="convert")
    snap = p.snapshot()
    assert (snap["phase"], snap["done"], snap["total"]) == ("convert", 0, None)
    assert snap["elapsed_s"] == 0.0
    p.update(total=20, unit="steps")
    p.advance(5)
    snap = p.snapshot()
    assert (snap["done"], snap["total"], snap["unit"]) == (5, 20, "steps")


def test_same_phase_keeps_counters() -> None:
    p = Progress(Clock())
    p.update(phase="write", done=10, total=100)
    p.update(phase="write")
    assert p.snapshot()["done"] == 10


def test_no_eta_without_total_or_when_overshooting() -> None:
    clock = Clock()
    p = Progress(clock)
    p.update(phase="stream", done=0)
    clock.now += 1
    p.advance(50)
    assert p.snapshot()["eta_s"] is None
    p.update(total=10)
    assert p.snapshot()["eta_s"] is None


def test_extra_fields_are_reported_and_kept_json_safe() -> None:
    p = Progress(Clock())
    p.update(phase="erase", device="/dev/sda", devices=["/dev/sda", "/dev/sdb"],
             odd={1, 2}, raw=b"\x00")
    snap = p.snapshot()
    assert snap["device"] == "/dev/sda"
    assert snap["devices"] == ["/dev/sda", "/dev/sdb"]
    assert isinstance(snap["odd"], str) and isinstance(snap["raw"], str)
    json.dumps(snap)


def test_concurrent_advances_are_not_lost() -> None:
    p = Progress()
    p.update(phase="write", total=8 * 5000)

    def work() -> None:
        for _ in range(5000):
            p.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.snapshot()["done"] == 8 * 5000
