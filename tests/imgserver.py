"""A real HTTP server on 127.0.0.1 whose misbehaviour tests can script.

It serves files from memory, honours Range requests (unless told not to),
can drop the connection once at each of a list of byte offsets, and can
answer a scripted sequence of status codes before serving normally.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from typing import Any

RANGE = re.compile(r"bytes=(\d+)-$")


class ImageServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.drop_at: list[int] = []       # absolute offsets; each used once
        self.statuses: list[int] = []      # served (and consumed) before real answers
        self.log: list[dict[str, Any]] = []
        self.etag = '"v1"'
        self.throttle_s = 0.0              # pause per chunk, to make progress observable
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                server._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0].lstrip("/")
        entry = {"path": path, "range": h.headers.get("Range"),
                 "if_range": h.headers.get("If-Range")}
        self.log.append(entry)
        if self.statuses:
            status = self.statuses.pop(0)
            entry["status"] = status
            h.send_response(status)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = self.files.get(path)
        if data is None:
            entry["status"] = 404
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = 0
        match = RANGE.match(h.headers.get("Range") or "")
        if match and self.ranges and h.headers.get("If-Range") in (None, self.etag):
            start = int(match.group(1))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        entry["status"] = 206 if start else 200
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("ETag", self.etag)
        if self.ranges:
            h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        drop = next((d for d in sorted(self.drop_at) if d > start), None)
        end = len(data) if drop is None else drop
        if drop is not None:
            self.drop_at.remove(drop)
        pos = start
        try:
            while pos < end:
                chunk = data[pos:min(end, pos + (256 << 10))]
                h.wfile.write(chunk)
                pos += len(chunk)
                if self.throttle_s:
                    threading.Event().wait(self.throttle_s)
            if drop is not None:
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
        except OSError:
            h.close_connection = True
