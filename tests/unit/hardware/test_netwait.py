"""The start-up network wait's policy, on an injected clock."""

from __future__ import annotations

import logging

from agent.hardware import netwait


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_at_the_first_poll_that_finds_an_address(caplog) -> None:
    clock = Clock()
    answers = iter([{}, {}, {"ens3": ["10.0.2.15"]}])
    with caplog.at_level(logging.INFO):
        assert netwait.wait_for_address(60, addresses=lambda: next(answers),
                                        sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [netwait.POLL_S, netwait.POLL_S]
    assert "ens3 has 10.0.2.15 after 0.2s" in caplog.text


def test_gives_up_after_the_timeout_and_says_so(caplog) -> None:
    clock = Clock()
    assert not netwait.wait_for_address(1.0, addresses=dict, sleep=clock.sleep, clock=clock)
    assert 9 <= len(clock.sleeps) <= 11
    assert "no interface has an address after 1s" in caplog.text


def test_zero_means_no_wait() -> None:
    calls: list[int] = []
    assert netwait.wait_for_address(0, addresses=lambda: calls.append(1) or {})
    assert calls == []
