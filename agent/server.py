"""Serve the WSGI app with cheroot, hardened against slow, idle and malformed clients.

Why cheroot, patched, rather than another server: it is already a dependency,
pure Python, maintained, threaded (commands and state live in this process)
and speaks TLS through the stdlib ``ssl`` module.  waitress reads whole
requests before dispatch but has no TLS; gunicorn forks workers, which would
split the agent's state; uvicorn, hypercorn and granian are ASGI or native
runtimes that bring asyncio or a binary and still answer malformed requests in
plain text.  cheroot's weak points are few and reachable through its subclass
hooks: the TLS handshake ran in the single accept thread, a new connection took
a worker before sending a byte, reads had no overall deadline, the pool was
fixed, and its own error answers were plain text.  Each is fixed below.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from cheroot import errors as cherrors
from cheroot import server as chserver
from cheroot import wsgi
from cheroot.makefile import MakeFile
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.workers import threadpool
from flask import Flask

from agent import errors, tls
from agent.api import PEER_CLOSED

LOG = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0         # TLS handshake + request line + headers, in total
IO_TIMEOUT = 30             # any single read or write; also idle keep-alive expiry
BODY_MIN_RATE = 64 * 1024   # bytes/s a body must keep up, after HEAD_TIMEOUT of grace
MAX_HEADER_BYTES = 64 * 1024
# after an early error answer: drop up to this much of the rest of the request,
# for at most this long, giving up after this much silence
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0
DRAIN_QUIET_S = 0.5
MAX_CHUNK_LINE = 1024
BACKLOG = 128               # 5 (cheroot's default) made 60 quick connects take 10 s
MIN_THREADS = 8
# slow clients each hold a worker until their deadline: the pool grows on
# demand so /v1/status still finds one, up to a cap that bounds memory
MAX_THREADS = 256


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def fault_body(status: str, detail: str = "") -> bytes:
    """The API's ``{faultcode, faultstring}`` envelope for a server-level answer."""
    code = int(status[:3])
    text = f"{status}: {errors.cap(detail, 200)}" if detail else status
    return json.dumps({"faultcode": "Client" if code < 500 else "Server",
                       "faultstring": text}).encode()


def peer_closed(sock: Any) -> bool:
    """True once the client hung up (seen on the raw fd, so TLS too)."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        events = poller.poll(0)
    except (OSError, ValueError):
        return True
    gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
    return any(ev & gone for _, ev in events)


class _DeadlineSocket:
    """Reads fail with a timeout once ``deadline`` passes, whatever the trickle rate.

    A plain socket timeout restarts at every byte, so a client sending one
    byte per 29 s could hold a worker for ever.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None
        self.body_rate = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv_into(self, buf: Any, *args: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(min(left, IO_TIMEOUT))
        n = self._sock.recv_into(buf, *args)
        if self.body_rate and self.deadline is not None:
            self.deadline += n / BODY_MIN_RATE
        return n

    def send(self, data: Any, *args: Any) -> int:
        self._sock.settimeout(IO_TIMEOUT)
        return self._sock.send(data, *args)

    def sendall(self, data: Any, *args: Any) -> None:
        self._sock.settimeout(IO_TIMEOUT)
        self._sock.sendall(data, *args)

    def head(self) -> None:
        self.deadline = time.monotonic() + HEAD_TIMEOUT
        self.body_rate = False

    def body(self) -> None:
        self.deadline = time.monotonic() + HEAD_TIMEOUT
        self.body_rate = True


class ChunkedBody:
    """``wsgi.input`` for a chunked body: strict sizes, counted against ``limit`` as read."""

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile = rfile
        self._limit = limit
        self._left = 0          # bytes left in the current chunk
        self._total = 0
        self.done = False

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_CHUNK_LINE + 1)
        if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\r\n"):
            raise errors.MalformedRequest("chunked body: bad or overlong chunk line")
        return line[:-2]

    def _next_chunk(self) -> None:
        field = self._line().split(b";", 1)[0].strip()
        if not field or len(field) > 16 or field.strip(b"0123456789abcdefABCDEF"):
            raise errors.MalformedRequest(
                "chunked body: chunk size is not 1 to 16 hexadecimal digits")
        size = int(field, 16)
        if size == 0:
            for _ in range(64):     # trailers, ignored
                if not self._line():
                    self.done = True
                    return
            raise errors.MalformedRequest("chunked body: too many trailer lines")
        if self._total + size > self._limit:
            raise errors.RequestTooLarge(f"the body exceeds {self._limit} bytes")
        self._left = size

    def read(self, size: int | None = -1) -> bytes:
        out = bytearray()
        while not self.done and (size is None or size < 0 or len(out) < size):
            if self._left == 0:
                self._next_chunk()
                continue
            want = self._left if size is None or size < 0 else min(self._left, size - len(out))
            data = self._rfile.read(want)
            if not data:
                raise errors.MalformedRequest("chunked body: connection ended inside a chunk")
            out += data
            self._left -= len(data)
            self._total += len(data)
            if self._left == 0 and self._rfile.read(2) != b"\r\n":
                raise errors.MalformedRequest("chunked body: chunk not followed by CRLF")
        return bytes(out)


class _Request(chserver.HTTPRequest):
    def parse_request(self) -> None:
        self.conn.socket.head()
        super().parse_request()
        self.conn.socket.body()

    def respond(self) -> None:
        limit = self.server.max_request_body_size
        if self.chunked_read:
            self.rfile = ChunkedBody(self.conn.rfile, limit)
        else:
            # parse_request already refused a Content-Length over the limit
            self.rfile = chserver.KnownLengthRFile(
                self.conn.rfile, int(self.inheaders.get(b"Content-Length", 0)))
        self.server.gateway(self).respond()
        if self.ready:
            self.ensure_headers_sent()
        if self.chunked_write:
            self.conn.wfile.write(b"0\r\n\r\n")
        # a body the app left unread would be parsed as the next request
        if isinstance(self.rfile, ChunkedBody):
            unread = not self.rfile.done
        else:
            unread = self.rfile.remaining > 0
        if unread:
            self.close_connection = True

    def simple_response(self, status: Any, msg: Any = "") -> None:
        status = str(status)
        if isinstance(msg, bytes):
            msg = msg.decode("latin-1")
        body = fault_body(status, msg)
        # after a framing error nothing further on this connection can be trusted
        self.close_connection = True
        head = (f"{self.server.protocol} {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            self.conn.wfile.write(head.encode("latin-1") + body)
        except OSError as exc:
            if exc.args[0] not in cherrors.socket_errors_to_ignore:
                raise
            return
        self._drain()

    def _drain(self) -> None:
        """Read and drop what the client is still sending, briefly, before the close.

        Closing with unread bytes makes the kernel send a reset, which can destroy
        the error answer before the client reads it (seen with a 100 KB header
        refused after 64 KB).  Bounded in bytes and time, so it cannot hold a worker.
        """
        raw = getattr(self.conn.socket, "_sock", self.conn.socket)
        deadline = time.monotonic() + DRAIN_SECONDS
        left = DRAIN_BYTES
        try:
            while left > 0:
                wait = min(DRAIN_QUIET_S, deadline - time.monotonic())
                if wait <= 0:
                    break
                raw.settimeout(wait)
                chunk = raw.recv(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            pass        # quiet, closed or reset: nothing more to drop


class _Connection(chserver.HTTPConnection):
    RequestHandlerClass = _Request

    def __init__(self, server: Any, sock: Any, makefile: Any = MakeFile) -> None:
        super().__init__(server, _DeadlineSocket(sock), makefile)
        self.handshaken = not isinstance(sock, ssl.SSLSocket)

    def communicate(self) -> bool:
        if not self.handshaken and not self._handshake():
            return False
        return super().communicate()

    def _handshake(self) -> bool:
        # done here, in a worker, under the head deadline: in the accept thread
        # one silent client froze the whole API
        raw = self.socket._sock
        try:
            raw.settimeout(HEAD_TIMEOUT)
            raw.do_handshake()
        except ssl.SSLError as exc:
            if "HTTP_REQUEST" in str(exc.reason):
                body = fault_body("400 Bad Request", "this port speaks HTTPS only")
                head = (f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
                try:
                    socket.socket.sendall(raw, head.encode() + body)
                except OSError:
                    pass
            return False
        except OSError:
            return False
        self.handshaken = True
        return True


class _LazyTLSAdapter(BuiltinSSLAdapter):
    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), {}


class _ElasticPool(threadpool.ThreadPool):
    # internals the code below uses and cheroot's type stubs leave out
    _queue: Any
    _threads: list[Any]
    _spawn_worker: Callable[[], Any]

    def put(self, obj: Any) -> None:
        super().put(obj)
        # grow without cheroot's grow(), which sleeps 0.1 s per thread in the selector loop
        if self._queue.qsize() > self.idle and len(self._threads) < self.max:
            self._threads.append(self._spawn_worker())
        elif self.idle > 2 * self.min and self._queue.qsize() == 0:
            self.shrink(1)


class _Gateway(wsgi.Gateway_10):
    # cheroot's stub declares get_environ as returning None; it returns the environ
    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        env = super().get_environ()
        sock = self.req.conn.socket
        env[PEER_CLOSED] = lambda: peer_closed(sock)
        return env


class _Server(wsgi.Server):
    ConnectionClass = _Connection
    _connections: Any           # cheroot's ConnectionManager; its stubs leave it out

    def process_conn(self, conn: Any) -> None:
        # a new connection waits in the selector, not in a worker, until it
        # sends something: idle clients then cost a file descriptor, no thread
        if conn.last_used is None:
            self._connections.put(conn)
        else:
            super().process_conn(conn)


class AgentServer:
    """The hardened cheroot server in a background thread; ``port`` is known after start()."""

    def __init__(self, app: Flask, host: str, port: int, *, cert_file: str | None = None,
                 key_file: str | None = None, tls_min_version: str = "1.2",
                 ciphers: str | None = None, threads: int = MIN_THREADS,
                 max_body: int | None = None) -> None:
        if host in ("::", "") and not ipv6_available():
            host = "0.0.0.0"
        self._server = _Server((host, port), app, numthreads=threads,
                               server_name="deploy-agent", shutdown_timeout=2,
                               request_queue_size=BACKLOG, timeout=IO_TIMEOUT)
        self._server.requests = _ElasticPool(self._server, min=threads,
                                             max=max(threads, MAX_THREADS))
        self._server.gateway = _Gateway
        self._server.max_request_header_size = MAX_HEADER_BYTES
        self._server.max_request_body_size = max_body or app.config.get("MAX_CONTENT_LENGTH") or 0
        self.tls = False
        self._bound = False
        self._thread: threading.Thread | None = None
        if cert_file and key_file:
            self.use_tls(cert_file, key_file, tls_min_version, ciphers)

    def use_tls(self, cert_file: str, key_file: str, tls_min_version: str = "1.2",
                ciphers: str | None = None) -> None:
        """Serve HTTPS; allowed after bind(): sockets are wrapped per connection."""
        if self._thread is not None:
            raise RuntimeError("TLS must be set up before the server starts serving")
        adapter = _LazyTLSAdapter(cert_file, key_file)
        adapter.context = tls.server_context(cert_file, key_file, tls_min_version, ciphers)
        self._server.ssl_adapter = adapter
        self.tls = True

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def threads(self) -> int:
        return len(self._server.requests._threads)

    def bind(self) -> None:
        """Take the port now (OSError if it is in use); connections wait for start()."""
        if not self._bound:
            self._server.prepare()
            self._bound = True

    def start(self) -> None:
        self.bind()
        self._thread = threading.Thread(target=self._server.serve, name="api", daemon=True)
        self._thread.start()
        LOG.info("API listening on %s port %d (%s)", self._server.bind_addr[0], self.port,
                 "https" if self.tls else "http")

    def stop(self) -> None:
        self._server.stop()
        if self._thread:
            self._thread.join(timeout=5)

