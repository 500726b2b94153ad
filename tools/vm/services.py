"""The host side the VM talks to: a static HTTP server and the stand-in controller, on 127.0.0.1.

Both bind port 0 (the kernel picks a free port, no race) and are registered
with the run's Supervisor so they stop on every exit path.  The HTTP server
records what it served, which makes "did iPXE fetch the kernel?" and "did
the agent download the image?" answerable after a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
import time
from typing import Any

from vm import procs

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port nobody listens on now, for servers we cannot hand a socket (QEMU's hostfwd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: FileServer._Server
    # keep-alive for iPXE and the agent; every answer here carries a Content-Length
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        self.server.owner.record(self.address_string(), fmt % args)


class FileServer:
    """Serves one directory over HTTP/1.1 on 127.0.0.1."""

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        owner: FileServer

    def __init__(self, directory: str, log_path: str) -> None:
        self.directory = directory
        self.log_path = log_path
        self.requests: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        handler = functools.partial(_Handler, directory=directory)
        self._server = self._Server((LOOPBACK, 0), handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        daemon=True, name="vm-http")

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def record(self, client: str, line: str) -> None:
        entry = f"{time.strftime('%H:%M:%S')} {client} {line}"
        with self._lock:
            self.requests.append((time.monotonic(), line))
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(entry + "\n")

    def served(self, name: str) -> list[str]:
        """Request lines that fetched ``name``, e.g. ``'"GET /x HTTP/1.1" 200 -'``."""
        with self._lock:
            return [line for _, line in self.requests if f" /{name} " in line]

    def first_request(self, name: str, since: float = 0.0) -> float | None:
        """time.monotonic() of the first request for ``name`` made at ``since`` or later."""
        with self._lock:
            return next((t for t, line in self.requests
                         if t >= since and f" /{name} " in line), None)

    def start(self, supervisor: procs.Supervisor) -> FileServer:
        self._thread.start()
        supervisor.on_close("the HTTP server", self.stop)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_controller(supervisor: procs.Supervisor, node: dict[str, Any], mac: str,
                     config: dict[str, Any] | None = None) -> Any:
    """The stand-in controller (issue 8) in this process, knowing one node by its MAC."""
    import logging

    from agent.driver.standin import StandinController

    # werkzeug logs every request to stderr; the conductor polls once a second
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    controller = StandinController(host=LOOPBACK, port=0, config=config)
    controller.add_node(node, macs=[mac])
    controller.start()
    supervisor.on_close("the stand-in controller", controller.stop)
    return controller


def non_loopback_listeners(pids: list[int]) -> list[str]:
    """Listening TCP/UDP sockets of ``pids`` (and this process) not bound to loopback."""
    import ipaddress

    import psutil

    found = []
    for pid in sorted({os.getpid(), *pids}):
        try:
            proc = psutil.Process(pid)
            # net_connections() is psutil 6's name for connections()
            listed = getattr(proc, "net_connections", None) or proc.connections
            conns = listed(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM
                                                          and not c.raddr)
            if listening and c.laddr and not ipaddress.ip_address(
                    c.laddr.ip.split("%")[0]).is_loopback:
                found.append(f"pid {pid} on {c.laddr.ip}:{c.laddr.port}")
    return found


def link(directory: str, name: str, target: str) -> str:
    """Expose ``target`` as ``directory/name`` without copying it."""
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(os.path.abspath(target), path)
    return path
