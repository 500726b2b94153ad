"""Lookup retry policy, controller overrides and the token decision."""

from __future__ import annotations

import logging

import pytest

from agent.driver.standin import StandinController
from agent.errors import LookupFailed
from agent.ironic.http import ControllerClient
from agent.ironic.lookup import (
    apply_overrides,
    backoff_delay,
    conflict_wait,
    lookup,
    resolve_token,
)
from tests.unit.ironic.fakes import FakeTime, cfg


@pytest.fixture
def fake():
    controller = StandinController().start()
    yield controller
    controller.stop()


def test_backoff_grows_exponentially_within_one_and_sixty_seconds():
    bounds = []
    backoff_delay(0, 1.0, uniform=lambda a, b: bounds.append((a, b)) or b)
    for attempt in range(1, 9):
        backoff_delay(attempt, 1.0, uniform=lambda a, b: bounds.append((a, b)) or b)
    assert bounds[:7] == [(1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (1.0, 8.0), (1.0, 16.0),
                          (1.0, 32.0), (1.0, 60.0)]
    assert bounds[-1] == (1.0, 60.0)
    # huge attempt counts neither overflow nor exceed the cap
    assert backoff_delay(10_000, 1.0, uniform=lambda a, b: b) == 60.0
    # a zero interval still backs off instead of spinning
    assert backoff_delay(0, 0.0, uniform=lambda a, b: a) > 0


def test_conflicts_add_five_ten_then_thirty_seconds():
    assert [conflict_wait(n) for n in range(5)] == [0.0, 5.0, 10.0, 30.0, 30.0]


def test_lookup_retries_over_real_http_and_waits_longer_on_conflicts(fake):
    node = fake.add_node(macs=["52:54:00:12:34:56"])
    fake.lookup_statuses = [500, 409, 409, 503]
    t = FakeTime()
    client = ControllerClient([fake.url])
    body = lookup(client, ["52:54:00:12:34:56"], timeout=600, interval=1.0, sleep=t.sleep,
                  clock=t.clock, uniform=lambda a, b: a)
    assert body["node"]["uuid"] == node.uuid
    # backoff at its minimum (1 s) plus 5 s and 10 s for the consecutive 409s;
    # the 503 after them resets the conflict count
    assert t.sleeps == [1.0, 6.0, 11.0, 1.0]
    assert [r["status"] for r in fake.requests if r["kind"] == "lookup"] == [
        500, 409, 409, 503, 200]


def test_lookup_gives_up_after_the_timeout_with_an_operator_message(fake):
    fake.add_node(macs=["52:54:00:00:00:01"])
    t = FakeTime()
    with pytest.raises(LookupFailed) as err:
        lookup(ControllerClient([fake.url]), ["52:54:00:99:99:99"], timeout=10, interval=1.0,
               sleep=t.sleep, clock=t.clock, uniform=lambda a, b: b)
    assert sum(t.sleeps) == pytest.approx(10.0)  # never sleeps past the deadline
    assert t.sleeps[:4] == [1.0, 2.0, 4.0, 3.0]
    details = err.value.details
    assert "52:54:00:99:99:99" in details and "HTTP 404" in details
    assert "ipa-lookup-timeout" in details


def test_lookup_tries_urls_in_order_and_promotes_the_working_one(fake):
    node = fake.add_node(macs=None)
    dead = "http://127.0.0.1:9"  # discard port: connection refused at once
    client = ControllerClient([dead, fake.url])
    t = FakeTime()
    body = lookup(client, ["52:54:00:12:34:56"], timeout=5, interval=1, sleep=t.sleep,
                  clock=t.clock)
    assert body["node"]["uuid"] == node.uuid and t.sleeps == []
    assert client.urls == [fake.url, dead]


def test_overrides_map_controller_keys_to_settings(caplog):
    c = cfg()
    applied = apply_overrides(c, {
        "heartbeat_timeout": 42, "agent_md5_checksum_enable": True,
        "permitted_image_formats": ["raw"], "enable_bios_bootloader_install": "true",
        "tls_min_version": "1.3", "tls_cipher_suites": None,
        "disable_deep_image_inspection": False, "agent_skip_bmc_detect": True,
        "agent_token": "x" * 43, "agent_token_required": True, "metrics": {}})
    assert c.heartbeat_timeout == 42.0 and c.md5_enabled is True
    assert c.permitted_image_formats == ["raw"] and c.enable_bios_bootloader_install is True
    assert c.tls_min_version == "1.3" and c.skip_bmc_detect is True
    assert c.tls_cipher_suites is None and c.agent_token is None  # token: resolve_token
    assert c.sources["tls_min_version"] == "controller"
    assert "agent_token" not in applied and "tls_cipher_suites" not in applied


def test_an_unparseable_override_keeps_the_local_value(caplog):
    c = cfg()
    with caplog.at_level(logging.WARNING):
        applied = apply_overrides(c, {"tls_min_version": "1.0", "heartbeat_timeout": "soon"})
    assert applied == [] and c.tls_min_version == "1.2" and c.heartbeat_timeout == 300.0
    assert "tls_min_version ignored" in caplog.text and "heartbeat_timeout ignored" in caplog.text
    assert apply_overrides(c, None) == []


@pytest.mark.parametrize("preset,issued,source,token", [
    (None, "t" * 43, "lookup", "t" * 43),
    ("p" * 40, "t" * 43, "lookup", "t" * 43),      # the controller's fresh token wins
    ("p" * 40, "******", "preset", "p" * 40),      # virtual media: pre-set, then masked
    ("p" * 40, None, "preset", "p" * 40),
    (None, "******", None, None),                  # restarted agent: lock down
    (None, None, None, None),                      # no token at all: lock down
    (None, "short", None, None),                   # under 32 characters is not a token
])
def test_token_resolution(preset, issued, source, token):
    c = cfg(agent_token=preset)
    got, why = resolve_token(c, issued)
    assert got == source and c.agent_token == token
    if issued == "******" and source is None:
        assert "masked agent token" in why and "power-cycle" in why
