"""The v1 HTTP API: every row of the reference's error table (§2.7) and more.

Drives the real Flask app in-process through its test client; the functional
tests repeat the important paths over real HTTP against the real process.
"""

from __future__ import annotations

import hmac
import io
import json
import os
import time
from typing import Any

import pytest

from agent import __version__, api, config
from agent.commands import CommandRunner
from agent.extensions import load_extensions
from agent.state import AgentState

PLUGIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "plugins", "testext")
TOKEN = "t" * 43
FIVE = {"id", "command_name", "command_status", "command_error", "command_result"}


def make_client(monkeypatch, **flags: Any):
    monkeypatch.syspath_prepend(PLUGIN_DIR)
    flags.setdefault("standalone", True)
    cfg = config.load(env={}, read_proc=False, flags=flags)
    state = AgentState(cfg)
    state.tool_report = {"sgdisk": "/usr/sbin/sgdisk", "nvme": None}
    runner = CommandRunner(load_extensions(state, ["testing", "standby", "log"]),
                           cfg.max_results)
    client = api.create_app(state, runner).test_client()
    client.runner = runner
    client.state = state
    return client


@pytest.fixture
def client(monkeypatch):
    return make_client(monkeypatch, agent_token=TOKEN)


@pytest.fixture
def open_client(monkeypatch):
    return make_client(monkeypatch)


def q(**extra: str) -> str:
    params = {"agent_token": TOKEN, **extra}
    return "?" + "&".join(f"{k}={v}" for k, v in params.items())


def post(client, body: Any, **query: str):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/commands/" + q(**query), data=data,
                       content_type="application/json")


def assert_fault(resp, status: int, faultstring: str | None = None, prefix: str | None = None):
    assert resp.status_code == status
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"faultcode", "faultstring"}
    assert body["faultcode"] == ("Client" if status < 500 else "Server")
    assert isinstance(body["faultstring"], str)
    if faultstring is not None:
        assert body["faultstring"] == faultstring
    if prefix is not None:
        assert body["faultstring"].startswith(prefix), body["faultstring"]
    return body


def start_slow(client) -> dict[str, Any]:
    resp = post(client, {"name": "testing.slow", "params": {"steps": 100000, "delay": 0.01}},
                wait="false")
    assert resp.status_code == 200
    return resp.get_json()


def cancel_and_wait(client, command_id: str) -> dict[str, Any]:
    resp = client.post(f"/v1/commands/{command_id}/cancel" + q(wait="true"))
    assert resp.status_code == 200
    return resp.get_json()


def poll(client, command_id: str, predicate, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/v1/commands/{command_id}" + q()).get_json()
        if predicate(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {data}")
        time.sleep(0.01)


# -- §2.7 error table, one test per row ------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("get", "/v1/commands/"), ("post", "/v1/commands/"), ("get", "/v1/commands/some-id"),
    ("post", "/v1/commands/some-id/cancel"),
])
@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1], TOKEN + "x", ""])
def test_row_missing_or_wrong_token_401(client, method: str, path: str, token) -> None:
    query = "" if token is None else f"?agent_token={token}"
    resp = getattr(client, method)(path + query, data=b"{not json",
                                   content_type="application/json")
    # checked before the body is parsed: 401 wins over 400
    assert_fault(resp, 401, "401 Unauthorized: Token invalid.")
    assert client.runner.list_results() == []


def test_row_body_not_json_400(client) -> None:
    resp = post(client, b'{"name": "standby.sync", ')
    assert_fault(resp, 400, prefix="400 Bad Request: Failed to decode JSON object: Expecting")
    assert_fault(post(client, b""), 400,
                 prefix="400 Bad Request: Failed to decode JSON object: ")
    assert_fault(post(client, b"\xff\xfe"), 400,
                 prefix="400 Bad Request: Failed to decode JSON object: ")


@pytest.mark.parametrize("body", [
    {"params": {}}, {"name": "standby.sync"}, {"name": "standby.sync", "params": []},
    {"name": "standby.sync", "params": None}, {"name": 5, "params": {}}, ["standby.sync"],
    '"standby.sync"', "null",
])
def test_row_missing_or_invalid_name_or_params_400(client, body: Any) -> None:
    assert_fault(post(client, body), 400, "400 Bad Request: Missing or invalid name or params")


def test_row_name_without_dot_400(client) -> None:
    assert_fault(post(client, {"name": "sync", "params": {}}), 400,
                 "Invalid command: Command name must be of the form <extension>.<name>")


def test_row_unknown_command_in_known_extension_400(client) -> None:
    assert_fault(post(client, {"name": "standby.dance", "params": {}}), 400,
                 "Invalid command: Unknown command: dance")


def test_row_parameter_validation_failed_400(client) -> None:
    assert_fault(post(client, {"name": "testing.echo", "params": {}}), 400,
                 "Invalid command parameters: 'value' is required")
    assert_fault(post(client, {"name": "testing.echo", "params": {"value": 3}}), 400,
                 "Invalid command parameters: 'value' must be a non-empty string, got 3")
    assert client.runner.list_results() == []


def test_row_unknown_extension_404(client) -> None:
    assert_fault(post(client, {"name": "flow.start_flow", "params": {}}), 404,
                 "Not found: Extension with id flow not found.")


def test_row_unknown_command_id_404(client) -> None:
    assert_fault(client.get("/v1/commands/0000-nope" + q()), 404,
                 "Not found: Command Result with id 0000-nope not found.")
    assert_fault(client.get("/v1/commands/0000-nope" + q(wait="true")), 404,
                 "Not found: Command Result with id 0000-nope not found.")


@pytest.mark.parametrize("path", ["/v2/", "/v1/nothing", "/favicon.ico", "/v1/commands/a/b"])
def test_row_unknown_url_404(client, path: str) -> None:
    assert_fault(client.get(path), 404,
                 prefix="404 Not Found: The requested URL was not found on the server.")


@pytest.mark.parametrize("method, path", [
    ("put", "/v1/commands/"), ("delete", "/v1/commands/"), ("patch", "/v1/commands/x"),
    ("post", "/v1/status"), ("post", "/"), ("get", "/v1/commands/x/cancel"),
])
def test_row_wrong_method_405(client, method: str, path: str) -> None:
    assert_fault(getattr(client, method)(path + q()), 405,
                 "405 Method Not Allowed: The method is not allowed for the requested URL.")


def test_row_previous_command_running_409(client) -> None:
    running = start_slow(client)
    try:
        for body in ({"name": "standby.sync", "params": {}},
                     {"name": "testing.slow", "params": {}}):
            body = assert_fault(post(client, body, wait="true"), 409,
                                "Agent is busy: executing command slow")
            # the conductor also matches this substring
            assert "agent is busy" in body["faultstring"].lower()
        assert [r.id for r in client.runner.list_results()] == [running["id"]]
    finally:
        cancel_and_wait(client, running["id"])
    assert post(client, {"name": "standby.get_partition_uuids", "params": {}}).status_code == 200


def test_row_unexpected_server_failure_500(client) -> None:
    client.state.tool_report = None     # something the status handler cannot cope with
    body = assert_fault(client.get("/v1/status"), 500)
    assert body["faultcode"] == "Server"
    assert "AttributeError" in body["faultstring"]


# -- body size ------------------------------------------------------------------------

def test_too_large_body_413(monkeypatch) -> None:
    client = make_client(monkeypatch, agent_token=TOKEN, max_request_bytes=4096)
    big = json.dumps({"name": "testing.echo", "params": {"value": "x" * 5000}})
    assert_fault(post(client, big), 413, prefix="413 Request Entity Too Large")
    assert client.runner.list_results() == []
    small = {"name": "testing.echo", "params": {"value": "x" * 3000}}
    assert post(client, small).status_code == 200


def test_too_large_chunked_body_413(monkeypatch) -> None:
    # no Content-Length: the limit must still hold, not silently cut the body
    client = make_client(monkeypatch, agent_token=TOKEN, max_request_bytes=4096)
    big = json.dumps({"name": "testing.echo", "params": {"value": "x" * 5000}}).encode()
    resp = client.post("/v1/commands/" + q(), input_stream=io.BytesIO(big),
                       content_type="application/json")
    assert_fault(resp, 413, prefix="413 Request Entity Too Large")
    small = json.dumps({"name": "testing.echo", "params": {"value": "x"}}).encode()
    resp = client.post("/v1/commands/" + q(), input_stream=io.BytesIO(small),
                       content_type="application/json")
    assert resp.get_json()["command_result"] == {"echoed": "x"}


# -- trailing slashes (§2.3): both forms served directly, no redirect ---------------------

@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/commands", "/v1/commands/", "/"])
def test_trailing_slash_get(client, path: str) -> None:
    resp = client.get(path + q())
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"


@pytest.mark.parametrize("path", ["/v1/commands", "/v1/commands/"])
def test_trailing_slash_post(client, path: str) -> None:
    resp = client.post(path + q(wait="true"),
                       data=json.dumps({"name": "testing.echo", "params": {"value": "a"}}),
                       content_type="application/json")
    assert resp.status_code == 200
    assert resp.get_json()["command_result"] == {"echoed": "a"}


def test_command_by_id_with_trailing_slash(client) -> None:
    done = post(client, {"name": "testing.echo", "params": {"value": "a"}}).get_json()
    assert client.get(f"/v1/commands/{done['id']}/" + q()).get_json()["id"] == done["id"]


def test_unversioned_aliases(client) -> None:
    assert client.get("/status").status_code == 200
    assert client.get("/commands/" + q()).get_json() == {"commands": []}
    resp = client.post("/commands/" + q(), data=json.dumps({"name": "testing.echo",
                                                            "params": {"value": "b"}}),
                       content_type="application/json")
    assert resp.get_json()["command_name"] == "echo"


# -- descriptors and status -----------------------------------------------------------

def test_root_descriptor(client) -> None:
    body = client.get("/").get_json()
    assert set(body) >= {"name", "description", "versions", "default_version"}
    assert body["default_version"]["id"] == "v1"
    assert body["versions"] == [body["default_version"]]
    assert body["default_version"]["links"][0]["href"] == "http://localhost/v1/"


def test_v1_descriptor(client) -> None:
    body = client.get("/v1/").get_json()
    assert body["id"] == "v1"
    assert body["commands"][0]["href"] == "http://localhost/v1/commands/"
    assert body["status"][0]["href"] == "http://localhost/v1/status"
    assert body["media_types"][0]["type"] == \
        "application/vnd.openstack.ironic-python-agent.v1+json"


def test_status_is_open_and_has_extra_fields(client) -> None:
    body = client.get("/v1/status").get_json()
    assert body["version"] == __version__
    assert body["started_at"] == client.state.started_at
    assert isinstance(body["started_at"], float)
    assert body["busy"] is None
    assert body["missing_tools"] == ["nvme"]
    running = start_slow(client)
    try:
        assert client.get("/v1/status").get_json()["busy"] == "slow"
    finally:
        cancel_and_wait(client, running["id"])


# -- token ----------------------------------------------------------------------------

def test_valid_token_is_accepted_and_compared_in_constant_time(client, monkeypatch) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    assert client.get("/v1/commands/" + q()).status_code == 200
    assert calls == [(TOKEN.encode(), TOKEN.encode())]
    assert client.get("/v1/commands/?agent_token=nope").status_code == 401
    assert calls[-1] == (b"nope", TOKEN.encode())


def test_token_is_only_read_from_the_query(client) -> None:
    resp = client.get("/v1/commands/", headers={"X-Agent-Token": TOKEN,
                                                "Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 401


def test_without_a_token_and_a_controller_every_command_request_fails(monkeypatch) -> None:
    # before lookup the agent holds no token: nothing may pass
    client = make_client(monkeypatch, standalone=False)
    assert_fault(client.get("/v1/commands/"), 401)
    assert_fault(client.get("/v1/commands/?agent_token="), 401)
    assert_fault(post(client, {"name": "standby.sync", "params": {}}), 401)
    assert client.get("/v1/status").status_code == 200
    # once the controller hands one out, it is required
    client.state.config.set("agent_token", TOKEN, source="lookup")
    assert client.get("/v1/commands/" + q()).status_code == 200


def test_standalone_without_token_is_open(open_client) -> None:
    assert open_client.get("/v1/commands/").get_json() == {"commands": []}
    resp = open_client.post("/v1/commands/?wait=true",
                            data=json.dumps({"name": "testing.echo", "params": {"value": "z"}}),
                            content_type="application/json")
    assert resp.status_code == 200
    # a stray token is harmless there
    assert open_client.get("/v1/commands/?agent_token=whatever").status_code == 200


# -- results --------------------------------------------------------------------------

def test_command_result_has_exactly_five_fields(client) -> None:
    body = post(client, {"name": "testing.echo", "params": {"value": "secret-value"}},
                wait="true").get_json()
    assert set(body) == FIVE
    assert body["command_name"] == "echo"
    assert body["command_status"] == "SUCCEEDED"
    listed = client.get("/v1/commands/" + q()).get_json()
    assert listed == {"commands": [body]}
    assert set(listed["commands"][0]) == FIVE


@pytest.mark.parametrize("name", ["testing.fail_sync", "testing.fail_async"])
def test_list_stays_200_after_a_command_raised(client, name: str) -> None:
    resp = post(client, {"name": name, "params": {}}, wait="true")
    assert resp.status_code == 200
    failed = resp.get_json()
    assert failed["command_status"] == "FAILED"
    assert failed["command_name"] == name.split(".")[1]
    kind = "sync" if name.endswith("sync") and "async" not in name else "async"
    assert failed["command_error"] == {"type": "CommandExecutionError", "code": 500,
                                       "message": "Command execution failed",
                                       "details": f"ValueError: {kind} command broke"}
    for _ in range(2):
        listed = client.get("/v1/commands/" + q())
        assert listed.status_code == 200
        assert listed.get_json()["commands"][-1] == failed
    assert post(client, {"name": "standby.get_partition_uuids", "params": {}}).status_code == 200


def test_async_post_returns_running_and_get_wait_blocks(client) -> None:
    resp = post(client, {"name": "testing.slow", "params": {"steps": 3, "delay": 0.01}},
                wait="false")
    body = resp.get_json()
    assert body["command_status"] == "RUNNING"
    assert body["command_error"] is None
    final = client.get(f"/v1/commands/{body['id']}" + q(wait="True")).get_json()
    assert final["command_status"] == "SUCCEEDED"
    assert final["command_result"] == {"result": "slow: counted to 3"}


@pytest.mark.parametrize("wait", ["true", "TRUE", "True"])
def test_post_wait_is_case_insensitive(client, wait: str) -> None:
    body = post(client, {"name": "testing.slow", "params": {"steps": 2, "delay": 0.01}},
                wait=wait).get_json()
    assert body["command_status"] == "SUCCEEDED"


def test_live_progress_while_running(client) -> None:
    running = post(client, {"name": "testing.slow",
                            "params": {"steps": 100000, "delay": 0.002}}).get_json()
    try:
        first = poll(client, running["id"], lambda d: d.get("progress", {}).get("done", 0) > 0)
        later = poll(client, running["id"],
                     lambda d: d["progress"]["done"] > first["progress"]["done"])
        for snap in (first, later):
            assert snap["command_status"] == "RUNNING"
            assert snap["progress"]["phase"] == "counting"
            assert snap["progress"]["total"] == 100000
            assert snap["progress"]["unit"] == "steps"
            assert snap["command_result"]["progress"]["phase"] == "counting"
            assert {"rate", "eta_s"} <= set(snap["progress"])
        listed = client.get("/v1/commands/" + q()).get_json()["commands"][-1]
        assert listed["progress"]["phase"] == "counting"
    finally:
        cancel_and_wait(client, running["id"])


def test_cancel_running_command(client) -> None:
    running = start_slow(client)
    final = cancel_and_wait(client, running["id"])
    assert final["command_status"] == "FAILED"
    assert final["command_error"]["type"] == "Cancelled"
    assert final["command_error"]["details"] == "slow was cancelled by request"
    listed = client.get("/v1/commands/" + q()).get_json()["commands"]
    assert listed[-1]["command_status"] == "FAILED"


def test_cancel_without_wait_returns_at_once(client) -> None:
    running = start_slow(client)
    resp = client.post(f"/v1/commands/{running['id']}/cancel" + q())
    assert resp.status_code == 200
    assert resp.get_json()["id"] == running["id"]
    poll(client, running["id"], lambda d: d["command_status"] == "FAILED")


def test_cancel_unknown_id_404(client) -> None:
    assert_fault(client.post("/v1/commands/nope/cancel" + q()), 404,
                 "Not found: Command Result with id nope not found.")


def test_cancel_finished_command_409(client) -> None:
    done = post(client, {"name": "testing.echo", "params": {"value": "a"}}).get_json()
    body = assert_fault(client.post(f"/v1/commands/{done['id']}/cancel" + q()), 409,
                        prefix="Command is not running: ")
    assert "already ended with SUCCEEDED" in body["faultstring"]


def test_power_off_refused_outside_a_ramdisk(monkeypatch) -> None:
    client = make_client(monkeypatch, agent_token=TOKEN, ramdisk="false")
    body = post(client, {"name": "standby.power_off", "params": {}}, wait="true").get_json()
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "PowerActionRefused"
    assert "machine was left running" in body["command_error"]["details"]


def test_log_listing_elides_the_payload_but_post_returns_it(client) -> None:
    body = post(client, {"name": "log.collect_system_logs", "params": {}},
                wait="true").get_json()
    assert body["command_status"] == "SUCCEEDED"
    blob = body["command_result"]["system_logs"]
    assert len(blob) > 100
    listed = client.get("/v1/commands/" + q()).get_json()["commands"][-1]
    assert listed["command_result"]["system_logs"].startswith("<elided,")
