"""The real agent process on 127.0.0.1, driven over HTTP(S) with agent/driver/client.py."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from agent import __version__, config, tls
from agent.driver.client import AgentAPIError, AgentClient, CommandFailed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(REPO, "tests", "plugins", "testext")
TOKEN = "functional-test-token-0123456789abcdefghij"
LONG = {"steps": 1_000_000, "delay": 0.005}     # runs until cancelled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """``python -m agent.cli serve --standalone`` with the test plugin on PYTHONPATH."""

    def __init__(self, tmp: str, *args: str, scheme: str = "http",
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.args = args
        self.scheme = scheme
        self.log_path = os.path.join(tmp, "agent.log")
        cmdline = os.path.join(tmp, "cmdline")
        with open(cmdline, "w") as f:
            f.write("\n")       # never inherit this host's kernel parameters
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)},
               **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([REPO, PLUGIN_DIR, env.get("PYTHONPATH", "")])
        self.port = free_port()
        self.argv = [sys.executable, "-m", "agent.cli", "serve", "--standalone",
                     "--listen", "127.0.0.1", "--port", str(self.port),
                     "--cmdline", cmdline, *args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"agent did not listen:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("agent ignored SIGTERM") from None
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[Agent]:
    # the default --ramdisk auto: exactly what someone running it locally gets
    a = Agent(str(tmp_path_factory.mktemp("plain")),
              env={"DEPLOY_AGENT_MAX_REQUEST_BYTES": "4096"})
    yield a
    a.stop()


@pytest.fixture
def client(agent: Agent) -> Iterator[AgentClient]:
    c = AgentClient(agent.url, timeout=30)
    yield c
    # every test leaves the shared agent idle for the next one
    for entry in c.list():
        if entry["command_status"] == "RUNNING":
            c.cancel(entry["id"])
            c.get(entry["id"], wait=True)


def start_long(client: AgentClient) -> dict[str, Any]:
    result = client.post("testing.slow", LONG)
    assert result["command_status"] == "RUNNING"
    return result


def poll_until(client: AgentClient, command_id: str, predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(command_id)
        if predicate(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {data}")
        time.sleep(0.02)


# -- the plain standalone agent ------------------------------------------------------------

def test_status_and_descriptors(agent: Agent, client: AgentClient) -> None:
    status = client.status()
    assert status["version"] == __version__
    assert isinstance(status["started_at"], float)
    assert status["started_at"] <= time.time()
    root = requests.get(agent.url + "/", timeout=30).json()
    assert root["default_version"]["id"] == "v1"
    assert requests.get(agent.url + "/v1", timeout=30, allow_redirects=False).status_code == 200


def test_commands_list_answers_per_contract(agent: Agent, client: AgentClient) -> None:
    for path in ("/v1/commands/", "/v1/commands"):
        resp = requests.get(agent.url + path, timeout=30, allow_redirects=False)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert isinstance(resp.json()["commands"], list)


def test_async_command_with_rising_progress(client: AgentClient) -> None:
    seen: list[dict[str, Any]] = []
    final = client.run("testing.slow", {"steps": 40, "delay": 0.02}, poll=0.05,
                       on_progress=seen.append)
    assert final["command_status"] == "SUCCEEDED"
    assert final["command_result"] == {"result": "slow: counted to 40"}
    dones = [p["done"] for p in seen]
    assert dones == sorted(dones)
    assert dones[-1] == 40
    assert len(set(dones)) >= 2, dones
    assert all(p["phase"] == "counting" and p["total"] == 40 for p in seen)


def test_progress_visible_in_the_listing_and_cancel(client: AgentClient) -> None:
    running = start_long(client)
    first = poll_until(client, running["id"], lambda d: (d.get("progress") or {}).get("done"))
    later = poll_until(client, running["id"],
                       lambda d: d["progress"]["done"] > first["progress"]["done"])
    assert later["command_status"] == "RUNNING"
    assert later["command_result"]["progress"]["phase"] == "counting"
    listed = client.list()[-1]
    assert listed["id"] == running["id"]
    assert listed["progress"]["total"] == LONG["steps"]

    client.cancel(running["id"])
    final = client.get(running["id"], wait=True)
    assert final["command_status"] == "FAILED"
    assert final["command_error"]["type"] == "Cancelled"
    assert final["command_error"]["details"] == "slow was cancelled by request"
    with pytest.raises(CommandFailed) as info:
        client.wait(final)
    assert info.value.error_type == "Cancelled"


def test_cancel_errors(client: AgentClient) -> None:
    with pytest.raises(AgentAPIError) as info:
        client.cancel("no-such-id")
    assert info.value.status == 404
    done = client.post("testing.echo", {"value": "x"})
    with pytest.raises(AgentAPIError) as info:
        client.cancel(done["id"])
    assert info.value.status == 409
    assert "already ended with SUCCEEDED" in info.value.faultstring_text


def test_busy_409(client: AgentClient) -> None:
    running = start_long(client)
    for name in ("standby.sync", "testing.slow"):
        with pytest.raises(AgentAPIError) as info:
            client.post(name, {}, wait=True)
        assert info.value.status == 409
        assert info.value.faultstring_text == "Agent is busy: executing command slow"
    assert client.status()["busy"] == "slow"
    assert client.list()[-1]["id"] == running["id"]


def test_log_collection_out_of_band_while_busy(client: AgentClient) -> None:
    running = start_long(client)
    logs = client.post("log.collect_system_logs", {}, wait=True)
    assert logs["command_status"] == "SUCCEEDED"
    assert logs["command_result"]["system_logs"]
    # not recorded: the running command is still the last entry
    assert client.list()[-1]["id"] == running["id"]


@pytest.mark.parametrize("name, kind", [("testing.fail_sync", "sync"),
                                        ("testing.fail_async", "async")])
def test_list_still_200_after_a_command_raised(agent, client, name: str, kind: str) -> None:
    posted = client.post(name, {}, wait=True)
    assert posted["command_status"] == "FAILED"
    assert posted["command_error"] == {"type": "CommandExecutionError", "code": 500,
                                       "message": "Command execution failed",
                                       "details": f"ValueError: {kind} command broke"}
    for _ in range(2):
        resp = requests.get(agent.url + "/v1/commands/", timeout=30)
        assert resp.status_code == 200
        assert resp.json()["commands"][-1] == posted
    with pytest.raises(CommandFailed) as info:
        client.run(name, {}, poll=0.05)
    assert info.value.error_type == "CommandExecutionError"
    assert f"ValueError: {kind} command broke" in info.value.details


def test_request_errors_come_in_the_envelope(agent: Agent) -> None:
    url = agent.url + "/v1/commands/"
    cases = [
        (b"{nope", 400, "400 Bad Request: Failed to decode JSON object: "),
        (b'{"name": "sync", "params": {}}', 400, "Invalid command: Command name must be"),
        (b'{"name": "standby.sync"}', 400, "400 Bad Request: Missing or invalid name or params"),
        (b'{"name": "nope.sync", "params": {}}', 404, "Not found: Extension with id nope"),
        (b'{"name": "testing.echo", "params": {}}', 400,
         "Invalid command parameters: 'value' is required"),
    ]
    for body, status, prefix in cases:
        resp = requests.post(url, data=body, headers={"Content-Type": "application/json"},
                             timeout=30)
        assert resp.status_code == status, body
        fault = resp.json()
        assert fault["faultcode"] == "Client"
        assert fault["faultstring"].startswith(prefix), fault
    resp = requests.put(url, timeout=30)
    assert resp.status_code == 405
    assert resp.json()["faultstring"].startswith("405 Method Not Allowed")


def test_too_large_body_413(agent: Agent) -> None:
    body = json.dumps({"name": "testing.echo", "params": {"value": "x" * 5000}}).encode()
    url = agent.url + "/v1/commands/"
    resp = requests.post(url, data=body, timeout=30)
    assert resp.status_code == 413
    assert resp.json()["faultstring"].startswith("413 Request Entity Too Large")
    # chunked, so no Content-Length announces the size
    resp = requests.post(url, data=iter([body[:3000], body[3000:]]), timeout=30)
    assert resp.status_code == 413
    assert resp.json()["faultcode"] == "Client"


def test_power_off_on_a_local_machine_is_refused(agent: Agent, client: AgentClient) -> None:
    if config.is_ramdisk(config.load(env={}, read_proc=False)):
        pytest.skip("this host's root is an initramfs: refusing to risk a real power off")
    with pytest.raises(CommandFailed) as info:
        client.run("standby.power_off", {}, poll=0.05)
    error = info.value.result["command_error"]
    assert error["type"] == "PowerActionRefused"
    assert "not running from a deploy ramdisk" in error["details"]
    assert "this machine was left running" in error["details"]
    # still here and still serving
    assert agent.proc.poll() is None
    assert client.status()["version"] == __version__
    sync_lockdown = client.post("system.lockdown", {}, wait=True)
    assert sync_lockdown["command_status"] == "FAILED"
    assert sync_lockdown["command_error"]["type"] == "PowerActionRefused"
    assert client.status()["busy"] is None


def test_standby_sync(client: AgentClient) -> None:
    result = client.post("standby.sync", {}, wait=True)
    assert result["command_status"] == "SUCCEEDED"
    assert result["command_error"] is None
    assert result["command_result"] is None


def test_collect_system_logs_is_a_tar_gz_with_the_agent_log(client: AgentClient) -> None:
    result = client.post("log.collect_system_logs", {}, wait=True)
    assert result["command_status"] == "SUCCEEDED"
    blob = base64.b64decode(result["command_result"]["system_logs"], validate=True)
    assert blob[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = tar.getnames()
        agent_log = tar.extractfile("deploy-agent.log").read().decode()
        mounts = tar.extractfile("proc-mounts").read().decode()
    assert {"dmesg", "lsblk", "ip-addr", "proc-cmdline"} <= set(names)
    assert f"deploy-agent {__version__} starting (standalone)" in agent_log
    assert "API listening on 127.0.0.1" in agent_log
    assert " / " in mounts
    listed = client.list()[-1]
    assert listed["command_result"]["system_logs"].startswith("<elided,")


def test_sigterm_stops_the_agent_cleanly(tmp_path) -> None:
    a = Agent(str(tmp_path))
    assert AgentClient(a.url).status()["version"] == __version__
    assert a.stop() == 0


def test_port_in_use_is_a_clear_error(agent: Agent, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--standalone",
                           "--listen", "127.0.0.1", "--port", str(agent.port),
                           "--cmdline", "/dev/null"],
                          env={**{k: v for k, v in os.environ.items()
                                  if not k.startswith(config.ENV_PREFIX)},
                               "PYTHONPATH": REPO}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "startup failed:" in proc.stderr
    assert "Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- token ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_agent(tmp_path_factory) -> Iterator[Agent]:
    a = Agent(str(tmp_path_factory.mktemp("token")), "--token", TOKEN)
    yield a
    a.stop()


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1]])
def test_token_required(token_agent: Agent, token) -> None:
    client = AgentClient(token_agent.url, token=token)
    for call in (client.list, lambda: client.post("standby.sync", {}, wait=True),
                 lambda: client.get("some-id")):
        with pytest.raises(AgentAPIError) as info:
            call()
        assert info.value.status == 401
        assert info.value.faultstring_text == "401 Unauthorized: Token invalid."
    assert client.status()["version"] == __version__     # status stays open


def test_right_token_is_accepted(token_agent: Agent) -> None:
    client = AgentClient(token_agent.url, token=TOKEN)
    result = client.post("testing.echo", {"value": "ok"}, wait=True)
    assert result["command_result"] == {"echoed": "ok"}
    assert client.list()[-1]["id"] == result["id"]


# -- TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory) -> tuple[str, str]:
    cert, key = tls.generate_certificate("127.0.0.1", "p384")
    return tls.write_pair(cert, key, str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory, cert_pair) -> Iterator[Agent]:
    cert, key = cert_pair
    a = Agent(str(tmp_path_factory.mktemp("tls")), "--tls-cert", cert, "--tls-key", key,
              "--token", TOKEN, scheme="https")
    yield a
    a.stop()


def test_static_tls_with_a_generated_certificate(tls_agent, cert_pair, tmp_path,
                                                monkeypatch) -> None:
    cert, _ = cert_pair
    # an unrelated CA bundle in the environment must not replace the pinned certificate
    other = tmp_path / "other-ca.pem"
    other.write_text(tls.generate_certificate("127.0.0.2", "p256")[0])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other))
    client = AgentClient(tls_agent.url, token=TOKEN, verify=cert)
    assert client.status()["version"] == __version__
    result = client.run("testing.slow", {"steps": 3, "delay": 0.01}, poll=0.05)
    assert result["command_status"] == "SUCCEEDED"


def test_tls_verification_fails_without_the_certificate(tls_agent: Agent) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        AgentClient(tls_agent.url, verify=True).status()
    # plain HTTP on the TLS port: no data, only the reason, in the API's envelope
    resp = requests.get(tls_agent.url.replace("https", "http") + "/v1/status", timeout=30)
    assert resp.status_code == 400
    assert resp.json() == {"faultcode": "Client",
                           "faultstring": "400 Bad Request: this port speaks HTTPS only"}


def test_tls13_client_like_the_conductor(tls_agent: Agent, cert_pair) -> None:
    ctx = ssl.create_default_context(cafile=cert_pair[0])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", tls_agent.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.3"


def test_auto_tls(tmp_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    a = Agent(str(tmp_path), "--auto-tls", scheme="https", env={"TMPDIR": str(scratch)})
    try:
        # the generated private key lives only in the SSL context, not on disk
        assert list(scratch.iterdir()) == []
        pem = ssl.get_server_certificate(("127.0.0.1", a.port))
        path = tmp_path / "pinned.crt"
        path.write_text(pem)
        # pin what the agent serves, as the conductor does with agent_verify_ca
        client = AgentClient(a.url, verify=str(path))
        assert client.status()["version"] == __version__
        assert client.post("testing.echo", {"value": "tls"}, wait=True)["command_result"] == \
            {"echoed": "tls"}
        cert = x509.load_pem_x509_certificate(pem.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.critical
        assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == \
            ["127.0.0.1"]
        assert isinstance(cert.public_key().curve, ec.SECP384R1)
        assert cert.not_valid_before_utc.timestamp() < time.time() - 3000
    finally:
        assert a.stop() == 0
