"""What tools/vm-deploy prints: progress lines and the timing breakdown."""

from __future__ import annotations

import sys
import time

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def banner(message: str) -> None:
    print(f"== {message}", flush=True)


class Timings:
    def __init__(self) -> None:
        self.phases: list[tuple[str, float, str]] = []

    def add(self, phase: str, seconds: float, note: str = "") -> None:
        self.phases.append((phase, round(seconds, 1), note))

    def total(self) -> float:
        return round(sum(s for _, s, _ in self.phases), 1)

    def as_dict(self) -> dict[str, float]:
        return {phase: seconds for phase, seconds, _ in self.phases} | {"total": self.total()}

    def print(self, out=sys.stdout) -> None:
        width = max([len(p) for p, _, _ in self.phases] + [5])
        print("timing breakdown:", file=out)
        for phase, seconds, note in self.phases:
            print(f"  {phase:<{width}} {seconds:7.1f} s   {note}", file=out)
        print(f"  {'total':<{width}} {self.total():7.1f} s", file=out, flush=True)
