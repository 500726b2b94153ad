"""Microversion detection, headers and field gating against the stand-in controller."""

from __future__ import annotations

import pytest

from agent.driver.standin import StandinController
from agent.ironic.http import ControllerClient, HeartbeatRejected, parse_version

DEAD = "http://127.0.0.1:9"


@pytest.fixture
def make_fake():
    started = []

    def make(**kw):
        fake = StandinController(**kw).start()
        started.append(fake)
        return fake
    yield make
    for fake in started:
        fake.stop()


def test_version_is_detected_and_capped_per_call(make_fake):
    fake = make_fake(version="1.99")
    node = fake.add_node(macs=None)
    client = ControllerClient([fake.url], request_id="req-1")
    assert client.max_version(fake.url) == (1, 99)
    body = client.lookup(["52:54:00:00:00:01"])
    token = body["config"]["agent_token"]
    client.heartbeat(node.uuid, "https://127.0.0.1:1", token, "1.0", "PEM")
    lookup_req, beat_req = [r for r in fake.requests if r["kind"] != "root"]
    assert lookup_req["headers"] == {"X-OpenStack-Ironic-API-Version": "1.62",
                                     "X-OpenStack-Request-ID": "req-1",
                                     "Accept": "application/json",
                                     "Content-Type": "application/json"}
    assert beat_req["headers"]["X-OpenStack-Ironic-API-Version"] == "1.68"
    # detected once per URL
    assert len([r for r in fake.requests if r["kind"] == "root"]) == 1


def test_older_api_gets_only_the_fields_it_knows(make_fake):
    fake = make_fake(version="1.50", require_tls=False)
    node = fake.add_node(macs=None)
    client = ControllerClient([fake.url])
    assert "agent_token" not in client.lookup(["52:54:00:00:00:01"])["config"]
    node.token = "z" * 43
    with pytest.raises(HeartbeatRejected) as err:
        client.heartbeat(node.uuid, "http://127.0.0.1:1", "z" * 43, "1.0", "PEM")
    # below 1.62 the token field does not exist, so it is not sent
    assert err.value.status == 400 and "token is required" in str(err.value)
    body = fake.heartbeats()[0]["json"]
    assert "agent_verify_ca" not in body and "agent_token" not in body
    assert body["agent_version"] == "1.0"


def test_pinned_version_skips_detection(make_fake):
    fake = make_fake(version="1.99")
    client = ControllerClient([fake.url], pinned_version="1.70")
    assert client.max_version(fake.url) == (1, 70)
    assert [r for r in fake.requests if r["kind"] == "root"] == []


def test_unreachable_api_falls_back_to_1_31():
    assert ControllerClient([DEAD], timeout=2).max_version(DEAD) == (1, 31)


def test_heartbeat_moves_to_the_next_url_on_connection_failure(make_fake):
    fake = make_fake()
    node = fake.add_node(token="k" * 43)
    client = ControllerClient([DEAD, fake.url])
    assert client.heartbeat(node.uuid, "https://127.0.0.1:1", "k" * 43, "1", None) == fake.url
    assert client.urls[0] == fake.url
    with pytest.raises(ConnectionError):
        ControllerClient([DEAD]).heartbeat(node.uuid, "https://x:1", "k", "1", None)


def test_ironic_error_text_is_extracted(make_fake):
    fake = make_fake()
    client = ControllerClient([fake.url])
    with pytest.raises(HeartbeatRejected) as err:
        client.heartbeat("no-such-node", "https://127.0.0.1:1", "k" * 43, "1", None)
    assert err.value.status == 404 and "Node no-such-node could not be found." in str(err.value)


def test_mdns_entries_are_dropped():
    assert ControllerClient(["mdns", DEAD]).urls == [DEAD]
    assert parse_version("1.68") == (1, 68) and parse_version("x") is None
