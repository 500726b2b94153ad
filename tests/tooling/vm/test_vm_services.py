import collections
import os
import socket
import urllib.request

import psutil
from vm import procs, services

Addr = collections.namedtuple("Addr", "ip port")
Conn = collections.namedtuple("Conn", "fd family type laddr raddr status")


def test_file_server_serves_loopback_and_records_requests(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "kernel").write_bytes(b"k" * 1000)
    services.link(str(tmp_path / "www"), "alias", str(tmp_path / "www" / "kernel"))
    with procs.Supervisor() as sup:
        server = services.FileServer(str(tmp_path / "www"), str(tmp_path / "http.log"))
        server.start(sup)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/alias") as resp:
            assert resp.read() == b"k" * 1000
        assert len(server.served("alias")) == 1
        assert server.served("kernel") == []
        assert services.non_loopback_listeners([]) == []
    assert '"GET /alias HTTP/1.1" 200' in (tmp_path / "http.log").read_text()
    # stopped with the supervisor
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def test_free_port_is_bindable_on_loopback():
    port = services.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_wildcard_listener_is_reported(monkeypatch):
    # a fabricated socket table: tests never bind beyond loopback themselves
    conns = [Conn(3, socket.AF_INET, socket.SOCK_STREAM, Addr("127.0.0.1", 8080), (),
                  psutil.CONN_LISTEN),
             Conn(4, socket.AF_INET6, socket.SOCK_STREAM, Addr("::", 9999), (),
                  psutil.CONN_LISTEN),
             Conn(5, socket.AF_INET, socket.SOCK_STREAM, Addr("10.0.0.5", 40000),
                  Addr("10.0.0.6", 80), psutil.CONN_ESTABLISHED)]

    class FakeProcess:
        def __init__(self, pid):
            self.pid = pid

        def net_connections(self, kind):
            return conns

    monkeypatch.setattr(psutil, "Process", FakeProcess)
    assert services.non_loopback_listeners([]) == [f"pid {os.getpid()} on :::9999"]
