"""The inspection run: collectors' failures in ``error``, the callback's retry policy, DHCP wait.

The callback is a real HTTP server on 127.0.0.1 answering a scripted list of
statuses; time is a fake clock that moves only when the code sleeps.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import pytest

from agent.inspection import collectors
from agent.ironic import inspect
from agent.state import AgentState
from tests.unit.ironic.fakes import FakeTime, cfg


class Callback:
    """Answers each POST with the next scripted (status, body); records what it got."""

    def __init__(self, script: list[tuple[int, Any]]) -> None:
        self.script = list(script)
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                owner.received.append(json.loads(self.rfile.read(length)))
                owner.headers.append(dict(self.headers))
                status, body = owner.script.pop(0) if owner.script else (202, {})
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/continue_inspection"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def callback():
    made: list[Callback] = []

    def make(script: list[tuple[int, Any]]) -> Callback:
        made.append(Callback(script))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_post_retries_409_and_5xx_then_returns_the_answer(callback):
    cb = callback([(409, {}), (503, {}), (202, {"uuid": "node-1"})])
    t = FakeTime()
    answer = inspect.post(cb.url, {"inventory": {}}, cfg(),
                          sleep=t.sleep, clock=t.clock)
    assert answer == {"uuid": "node-1"}
    assert len(cb.received) == 3 and t.sleeps == [1.0, 2.0]
    # no microversion: the initial version answers with the UUID and issues no token
    assert "X-OpenStack-Ironic-API-Version" not in cb.headers[0]


def test_post_gives_up_at_once_on_a_client_error(callback):
    cb = callback([(400, {"error_message": "No lookup information provided"})])
    t = FakeTime()
    with pytest.raises(inspect.InspectionFailed, match="refused the data: HTTP 400"):
        inspect.post(cb.url, {}, cfg(), sleep=t.sleep, clock=t.clock)
    assert len(cb.received) == 1 and t.sleeps == []


def test_post_gives_up_after_the_callback_timeout(callback):
    cb = callback([(500, {})] * 50)
    t = FakeTime()
    with pytest.raises(inspect.InspectionFailed, match=r"did not accept the data in 20s"):
        inspect.post(cb.url, {}, cfg(inspection_callback_timeout=20), sleep=t.sleep,
                     clock=t.clock)
    assert sum(t.sleeps) <= 20 and len(cb.received) >= 4


def test_post_retries_an_unreachable_callback():
    t = FakeTime()
    with pytest.raises(inspect.InspectionFailed, match="ConnectionError"):
        # port 9 (discard) on loopback: nobody listens, the connection is refused
        inspect.post("http://127.0.0.1:9/v1/continue_inspection", {},
                     cfg(inspection_callback_timeout=5), sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1.0, 2.0]


def test_the_node_uuid_from_either_answer_shape():
    assert inspect.node_uuid_from({"uuid": "a"}) == "a"
    assert inspect.node_uuid_from({"node": {"uuid": "b"}, "config": {}}) == "b"
    assert inspect.node_uuid_from({}) is None
    assert inspect.node_uuid_from({"uuid": 5}) is None


def test_an_unknown_or_failing_collector_is_reported_not_fatal(monkeypatch):
    class EntryPoint:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self._fn = name, fn

        def load(self) -> Any:
            return self._fn

    def good(state: AgentState, data: dict[str, Any]) -> None:
        data["good"] = True

    def broken(state: AgentState, data: dict[str, Any]) -> None:
        raise RuntimeError("sensor on fire")

    monkeypatch.setattr(collectors, "available", lambda: {
        "good": EntryPoint("good", good), "broken": EntryPoint("broken", broken)})
    data, failures = collectors.run(AgentState(cfg()), ["broken", "missing", "good"])
    assert data == {"good": True}
    assert failures == ["collector broken failed: RuntimeError: sensor on fire",
                        "collector 'missing' is not installed (known: broken, good)"]


def test_collect_puts_failures_in_the_error_key_and_keeps_an_inventory(monkeypatch):
    monkeypatch.setattr(collectors, "run", lambda state, names: ({}, ["collector x failed"]))

    class Runtime:
        config = cfg()
        state = AgentState(config)

    data = inspect.collect(Runtime())  # type: ignore[arg-type]
    assert data["error"] == "collector x failed"
    # Ironic finds the node by these MACs; without them it could not record the error
    assert isinstance(data["inventory"]["interfaces"], list)


@pytest.mark.parametrize("flags, addressed, expect_wait", [
    ({"inspection_dhcp_all_interfaces": True}, {"eth0"}, True),
    ({"bootif": "01-52-54-00-12-34-56"}, {"eth1"}, True),
    ({"bootif": "01-52-54-00-12-34-56"}, set(), False),
    ({}, set(), None),              # neither: nothing to wait for
])
def test_dhcp_wait(flags, addressed, expect_wait):
    t = FakeTime()
    seen: list[str] = []

    def has_address(name: str) -> bool:
        seen.append(name)
        return name in addressed or t.now > 1010

    done = inspect.wait_for_dhcp(
        cfg(inspection_dhcp_wait_timeout=30, **flags), has_address=has_address,
        nics=lambda: ["eth0"], nic_by_mac=lambda mac: "eth1" if mac else None,
        sleep=t.sleep, clock=t.clock)
    assert done is True
    if expect_wait is None:
        assert seen == []
    elif expect_wait and addressed:
        assert t.sleeps == []
    else:
        # the address came at t+10 s: it polled until then, not to the timeout
        assert 10 <= sum(t.sleeps) <= 12


def test_dhcp_wait_gives_up_at_the_timeout():
    t = FakeTime()
    done = inspect.wait_for_dhcp(cfg(inspection_dhcp_wait_timeout=5,
                                     inspection_dhcp_all_interfaces=True),
                                 has_address=lambda n: False, nics=lambda: ["eth0"],
                                 sleep=t.sleep, clock=t.clock)
    assert done is False and 5 <= sum(t.sleeps) <= 6
