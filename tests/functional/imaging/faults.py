"""An image server that misbehaves on purpose, on 127.0.0.1 (plain HTTP or TLS).

Beyond tests/imgserver.py it can cut every response at the same byte, stall a
response at a byte until released, stop serving a file after N responses,
stream a body without an announced end (capped, so a client that reads it all
fails its test instead of the machine running out of memory), and refuse to
serve after a request cap (so a client that loops forever fails its test
instead of hanging it).
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import threading
from typing import Any

from tests.imgserver import RANGE, ImageServer

CHUNK = 64 << 10


class FaultServer(ImageServer):
    def __init__(self, *, tls_dir: str | None = None) -> None:
        super().__init__()
        self.cut_every_at: int | None = None     # every response ends at this byte
        self.stall_at: dict[str, int] = {}       # path -> byte where the response waits
        self.stalled = threading.Event()         # set once a response is waiting
        self.release = threading.Event()         # set to let stalled responses go on
        self.serve_limit: dict[str, int] = {}    # path -> responses before it is 404
        self.forever: set[str] = set()           # paths whose body has no announced end
        # ...but does end here: a client that reads everything must fail its test, not
        # take the machine's memory
        self.forever_cap = 96 << 20
        self.max_requests = 60                   # then 404: a looping client ends
        self.sent: dict[str, int] = {}           # body bytes written per path
        self.served: dict[str, int] = {}
        self.scheme = "http"
        if tls_dir is not None:
            from agent import tls
            cert, key = tls.generate_certificate("127.0.0.1")
            cert_path, key_path = os.path.join(tls_dir, "c.pem"), os.path.join(tls_dir, "k.pem")
            with open(cert_path, "w") as f:
                f.write(cert)
            with open(key_path, "w") as f:
                f.write(key)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_path, key_path)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        super().stop()

    def count(self, path: str) -> int:
        return len([e for e in self.log if e["path"] == path])

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0].lstrip("/")
        if path in self.forever:
            self.log.append({"path": path, "range": None, "if_range": None, "status": 200})
            self._forever(h, path)
            return
        limit = self.serve_limit.get(path)
        if len(self.log) >= self.max_requests or (
                limit is not None and self.served.get(path, 0) >= limit):
            self.log.append({"path": path, "range": h.headers.get("Range"),
                             "if_range": None, "status": 404})
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if self.cut_every_at is None and path not in self.stall_at:
            self.served[path] = self.served.get(path, 0) + 1
            super()._handle(h)
            return
        self.served[path] = self.served.get(path, 0) + 1
        self._faulty(h, path)

    def _forever(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"0" * CHUNK
        try:
            while not self.release.is_set() and self.sent.get(path, 0) < self.forever_cap:
                h.wfile.write(chunk)
                self.sent[path] = self.sent.get(path, 0) + len(chunk)
        except OSError:
            pass
        h.close_connection = True

    def _faulty(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        data = self.files.get(path)
        entry: dict[str, Any] = {"path": path, "range": h.headers.get("Range"),
                                 "if_range": h.headers.get("If-Range")}
        self.log.append(entry)
        if data is None:
            entry["status"] = 404
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = 0
        match = RANGE.match(h.headers.get("Range") or "")
        if match and self.ranges:
            start = int(match.group(1))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        entry["status"] = 206 if start else 200
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("ETag", self.etag)
        h.end_headers()
        end = len(data)
        if self.cut_every_at is not None:
            end = max(start, self.cut_every_at)
        stall = self.stall_at.get(path)
        pos = start
        try:
            while pos < end:
                if stall is not None and pos >= stall and not self.release.is_set():
                    self.stalled.set()
                    self.release.wait(120)
                    stall = None
                step = min(end, pos + CHUNK, stall if stall is not None and stall > pos
                           else end)
                h.wfile.write(data[pos:step])
                self.sent[path] = self.sent.get(path, 0) + step - pos
                pos = step
                if self.throttle_s:
                    threading.Event().wait(self.throttle_s)
            h.wfile.flush()
            if end < len(data):
                h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        h.close_connection = True
