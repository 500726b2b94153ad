"""Checksum files: fetched with a memory cap, through the image's TLS and proxy settings."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from agent.errors import ImageDownloadError
from agent.imaging.source import fetch_text
from tests.conftest import requires_loop
from tests.functional.imaging.faults import FaultServer
from tests.functional.imaging.test_deploy_safety import gpt_image, make_agent, node_for, post

MiB = 1 << 20
LIMIT = 4 << 20


@pytest.fixture
def tls_server(tmp_path):
    s = FaultServer(tls_dir=str(tmp_path)).start()
    yield s
    s.stop()


def test_an_endless_body_is_refused_at_the_cap(server):
    server.forever.add("sums")
    outcome: dict = {}

    def fetch() -> None:
        try:
            fetch_text(f"{server.url}/sums", timeout=10)
        except ImageDownloadError as exc:
            outcome["error"] = exc
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(60)
    server.release.set()
    assert not worker.is_alive(), "fetch_text kept reading an endless checksum file"
    assert "larger than" in outcome["error"].details
    # the agent hung up near the cap; the server would have sent far more
    assert server.sent["sums"] < LIMIT + 16 * MiB < server.forever_cap


def test_a_large_body_is_not_read_to_its_end(server):
    big = b"#" * (64 * MiB)
    server.files["sums"] = big
    server.stall_at["sums"] = 0          # served by the counting path; released at once
    server.release.set()
    with pytest.raises(ImageDownloadError, match="larger than"):
        fetch_text(f"{server.url}/sums", timeout=10)
    # the announced length alone refuses it; at most socket buffers were sent
    assert server.sent.get("sums", 0) < LIMIT + 16 * MiB


def test_error_names_no_query_string(server):
    with pytest.raises(ImageDownloadError) as exc:
        fetch_text(f"{server.url}/missing?temp_url_sig=s3cr3t", timeout=10)
    assert "404" in exc.value.details and "s3cr3t" not in exc.value.details


class _Proxy:
    """A forward proxy on 127.0.0.1 that answers absolute-URI GETs from its own files."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                proxy.seen.append(self.path)
                body = files.get(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@requires_loop
def test_checksum_file_uses_the_image_proxies(loop_disk, tmp_path, monkeypatch):
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    data = gpt_image(tmp_path)
    # a port bound but not listening: only the proxy can answer for this "origin"
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        origin = f"http://127.0.0.1:{hole.getsockname()[1]}/images"
        proxy = _Proxy({"img": data,
                        "SHA256SUMS": f"{hashlib.sha256(data).hexdigest()}  img\n".encode()})
        try:
            _, client = make_agent()
            image_info = {"id": "p", "urls": [f"{origin}/img"],
                          "checksum": f"{origin}/SHA256SUMS", "proxies": {"http": proxy.url}}
            status, body = post(client, "standby.prepare_image",
                                {"image_info": image_info, "node": node_for(loop_disk)})
        finally:
            proxy.stop()
    assert body["command_status"] == "SUCCEEDED", body
    assert f"{origin}/SHA256SUMS" in proxy.seen and f"{origin}/img" in proxy.seen


@requires_loop
@pytest.mark.parametrize("insecure", [True, False])
def test_checksum_file_on_a_self_signed_server(tls_server, loop_disk, tmp_path, insecure):
    data = gpt_image(tmp_path)
    tls_server.files["img"] = data
    tls_server.files["SHA256SUMS"] = f"{hashlib.sha256(data).hexdigest()}  img\n".encode()
    _, client = make_agent(insecure=insecure)
    image_info = {"id": "tls", "urls": [f"{tls_server.url}/img"],
                  "checksum": f"{tls_server.url}/SHA256SUMS"}
    status, body = post(client, "standby.prepare_image",
                        {"image_info": image_info, "node": node_for(loop_disk)})
    if insecure:
        assert body["command_status"] == "SUCCEEDED", body
        with open(loop_disk, "rb") as f:
            assert f.read(len(data))[MiB:] == data[MiB:]
    else:
        assert body["command_status"] == "FAILED"
        assert "TLS" in body["command_error"]["details"]
