"""Heartbeat timing arithmetic (injected clock and random) and one real heartbeat."""

from __future__ import annotations

import logging
import threading

import pytest

from agent import __version__
from agent import config as config_mod
from agent.driver.standin import StandinController
from agent.ironic.heartbeat import Heartbeater, Schedule, next_interval
from agent.ironic.http import ControllerClient


def lo(a, b):
    return a


def hi(a, b):
    return b


def test_interval_after_success_is_thirty_to_sixty_percent_of_the_timeout():
    assert next_interval(300, True, lo) == pytest.approx(90.0)
    assert next_interval(300, True, hi) == pytest.approx(180.0)


def test_interval_after_an_error_is_five_to_ten_seconds():
    assert next_interval(300, False, lo) == 5.0
    assert next_interval(300, False, hi) == 10.0


def test_first_heartbeat_is_due_at_once():
    s = Schedule(now=50.0)
    assert s.is_due(50.0) and s.sleep_for(50.0) == 0.0


def test_loop_wakes_at_least_every_five_seconds():
    s = Schedule(now=0.0)
    s.sent(0.0, True, 300, lo)           # next at 90
    assert s.due_at() == 90.0
    assert s.sleep_for(1.0) == 5.0       # capped so stop and force are noticed
    assert s.sleep_for(88.0) == 2.0
    assert not s.is_due(89.9) and s.is_due(90.0)


def test_error_schedules_a_quick_retry():
    s = Schedule(now=0.0)
    s.sent(10.0, False, 300, hi)
    assert s.due_at() == 20.0


def test_forced_heartbeat_waits_five_seconds_after_the_previous_one():
    s = Schedule(now=0.0)
    s.sent(100.0, True, 300, lo)         # regular next at 190
    s.force()
    assert s.due_at() == 105.0
    assert not s.is_due(102.0) and s.is_due(105.0)
    s.sent(105.0, True, 300, lo)
    assert not s.forced and s.due_at() == 195.0


def test_forced_heartbeat_never_delays_a_sooner_regular_one():
    s = Schedule(now=0.0)
    s.sent(100.0, False, 300, lo)        # error retry at 105
    s.force()
    assert s.due_at() == 105.0
    s2 = Schedule(now=0.0)
    s2.sent(0.0, False, 300, lo)         # retry at 5
    s2.force()
    assert s2.due_at() == 5.0


def test_force_during_an_in_flight_heartbeat_is_kept():
    s = Schedule(now=0.0)
    seen = s.requested                   # the loop starts a heartbeat
    s.force()                            # a command ends while it is in flight
    s.sent(0.0, True, 300, lo, served=seen)
    assert s.forced and s.due_at() == 5.0


@pytest.fixture
def fake():
    controller = StandinController(config={"heartbeat_timeout": 100}).start()
    yield controller
    controller.stop()


def make(fake, node, token=None, **kw):
    cfg = config_mod.load(read_proc=False, env={}, flags={"agent_token": token})
    return Heartbeater(ControllerClient([fake.url]), node.uuid, "https://127.0.0.1:9999", cfg,
                       threading.Event(), verify_ca="-----BEGIN CERTIFICATE-----\nX\n", **kw)


def test_beat_sends_the_ironic_fields_and_reports_rejections(fake, caplog):
    node = fake.add_node(token="k" * 43)
    hb = make(fake, node, token="k" * 43)
    assert hb.beat() is True
    body = fake.heartbeats(node.uuid)[0]["json"]
    assert body == {"callback_url": "https://127.0.0.1:9999", "agent_token": "k" * 43,
                    "agent_version": __version__,
                    "agent_verify_ca": "-----BEGIN CERTIFICATE-----\nX\n"}
    fake.heartbeat_statuses = [409]
    with caplog.at_level(logging.WARNING):
        assert hb.beat() is False
    assert any(r.levelno == logging.WARNING and "conflict" in r.getMessage()
               for r in caplog.records)
    bad = make(fake, node, token="w" * 43)
    with caplog.at_level(logging.ERROR):
        assert bad.beat() is False
    assert "Invalid or missing agent token received." in caplog.text


def test_loop_stops_when_the_agent_stops(fake):
    node = fake.add_node(token="k" * 43)
    hb = make(fake, node, token="k" * 43)
    hb.start()
    fake.wait_for_heartbeats(node.uuid, 1, timeout=10)
    hb.stop()
    hb.join(10)
    assert not hb._thread.is_alive()
