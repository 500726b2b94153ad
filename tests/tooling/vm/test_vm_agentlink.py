import base64
import http.server
import io
import json
import tarfile
import threading

import pytest
import requests
from vm import agentlink

from agent import tls

ADVERTISED = "10.0.2.15"


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"version": "test"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def agent_like_server(tmp_path):
    """HTTPS on 127.0.0.1 with an auto-TLS style certificate for the guest's address."""
    cert_pem, key_pem = tls.generate_certificate(ADVERTISED)
    cert, key = tls.write_pair(cert_pem, key_pem, str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.socket = tls.server_context(cert, key, "1.2").wrap_socket(server.socket,
                                                                     server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


def test_pinned_certificate_verifies_through_the_forwarded_port(agent_like_server):
    port, cert = agent_like_server
    client = agentlink.local_client(f"https://{ADVERTISED}:9999", "tok", cert, port)
    assert client.url == f"https://127.0.0.1:{port}"
    assert client.status() == {"version": "test"}


def test_a_certificate_for_another_address_is_refused(agent_like_server):
    port, cert = agent_like_server
    client = agentlink.local_client("https://10.0.2.16:9999", "tok", cert, port)
    with pytest.raises(requests.exceptions.SSLError):
        client.status()


def test_another_ca_is_refused(agent_like_server, tmp_path):
    port, _ = agent_like_server
    other_pem, _ = tls.generate_certificate(ADVERTISED)
    other = tmp_path / "other.crt"
    other.write_text(other_pem)
    client = agentlink.local_client(f"https://{ADVERTISED}:9999", "tok", str(other), port)
    with pytest.raises(requests.exceptions.SSLError):
        client.status()


def _logs(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_agent_log_is_read_from_the_collected_tarball():
    blob = _logs({"journal": "j", "deploy-agent.log": "line 1\nline 2\n"})
    assert agentlink.agent_log_text(blob) == "line 1\nline 2\n"
    assert "no deploy-agent.log" in agentlink.agent_log_text(_logs({"journal": "j"}))


class _FakeClient:
    def __init__(self, result=None, error=None):
        self.result, self.error = result, error

    def post(self, name, params, wait):
        assert (name, params, wait) == ("log.collect_system_logs", {}, True)
        if self.error:
            raise self.error
        return self.result


def test_fetch_logs_saves_the_tarball(tmp_path):
    blob = _logs({"deploy-agent.log": "hello\n"})
    client = _FakeClient({"command_result": {"system_logs": base64.b64encode(blob).decode()}})
    path, text = agentlink.fetch_logs(client, str(tmp_path / "logs"), "failure")
    assert text == "hello\n"
    assert open(path, "rb").read() == blob


def test_fetch_logs_failure_is_reported_not_raised(tmp_path):
    client = _FakeClient(error=requests.ConnectionError("agent gone"))
    path, text = agentlink.fetch_logs(client, str(tmp_path), "failure")
    assert path is None
    assert "could not be collected: agent gone" in text
