"""Serve the WSGI app with cheroot (threaded, TLS-capable), never Flask's dev server."""

from __future__ import annotations

import logging
import socket
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from flask import Flask

from agent import tls

LOG = logging.getLogger(__name__)


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class AgentServer:
    """A cheroot server in a background thread; ``port`` is known after start()."""

    def __init__(self, app: Flask, host: str, port: int, *, cert_file: str | None = None,
                 key_file: str | None = None, tls_min_version: str = "1.2",
                 ciphers: str | None = None, threads: int = 8) -> None:
        if host in ("::", "") and not ipv6_available():
            host = "0.0.0.0"
        self._server = wsgi.Server((host, port), app, numthreads=threads,
                                   server_name="deploy-agent", shutdown_timeout=2)
        # a stuck client must not pin a worker forever
        self._server.timeout = 60
        self.tls = bool(cert_file)
        if cert_file and key_file:
            adapter = BuiltinSSLAdapter(cert_file, key_file)
            adapter.context = tls.server_context(cert_file, key_file, tls_min_version, ciphers)
            self._server.ssl_adapter = adapter
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    def start(self) -> None:
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="api", daemon=True)
        self._thread.start()
        LOG.info("API listening on %s port %d (%s)", self._server.bind_addr[0], self.port,
                 "https" if self.tls else "http")

    def stop(self) -> None:
        self._server.stop()
        if self._thread:
            self._thread.join(timeout=5)
