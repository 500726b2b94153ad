"""The in-memory log ring: bounded in lines and in characters, newest kept."""

from __future__ import annotations

import logging

from agent.agentlog import RingHandler


def _logger(ring: RingHandler) -> logging.Logger:
    log = logging.getLogger(f"test.ring.{id(ring)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(ring)
    return log


def test_ring_keeps_the_newest_lines_up_to_its_capacity() -> None:
    ring = RingHandler(capacity=3)
    log = _logger(ring)
    for i in range(5):
        log.info("line %d", i)
    lines = ring.text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["2", "3", "4"]


def test_ring_drops_old_lines_beyond_its_character_bound() -> None:
    ring = RingHandler(capacity=1000, max_chars=1000)
    log = _logger(ring)
    for i in range(10):
        log.info("%d %s", i, "x" * 300)
    text = ring.text()
    assert len(text) <= 1000 + 10       # the bound, plus one newline per kept line
    assert text.splitlines()[-1].endswith("9 " + "x" * 300)
    assert "0 xxx" not in text


def test_one_line_longer_than_the_bound_keeps_its_head() -> None:
    ring = RingHandler(capacity=10, max_chars=100)
    log = _logger(ring)
    log.info("start-%s", "y" * 500)
    text = ring.text()
    assert len(text) == 101 and "start-" in text
