"""What the Ironic-side unit tests share: settings from flags, and a clock that moves on sleep."""

from __future__ import annotations

from typing import Any

from agent import config as config_mod


def cfg(**flags: Any) -> config_mod.Config:
    return config_mod.load(read_proc=False, env={}, flags=flags)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
