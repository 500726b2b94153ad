"""Benchmark harness pieces: an HTTP server on 127.0.0.1 (nginx when installed, else
Python's), the environment agent processes run in, loop device hygiene."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

from bench.common import nginx


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@contextlib.contextmanager
def python_server(root: str) -> Iterator[str]:
    """http.server with a thread per request; it serves files with sendfile too."""
    handler = functools.partial(_QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def http_server(root: str, kind: str = "auto") -> Iterator[str]:
    """Serve ``root``; ``kind`` is 'nginx', 'python' or 'auto' (nginx if installed)."""
    use_nginx = kind == "nginx" or (kind == "auto" and shutil.which("nginx"))
    with (nginx(root) if use_nginx else python_server(root)) as url:
        yield url


def python_env(cache_dir: str) -> dict[str, str]:
    """Bytecode cached in ``cache_dir``, as the ramdisk ships the agent precompiled.

    Without this (PYTHONDONTWRITEBYTECODE in a dev shell) every process
    compiles the agent's modules again and imports look several times dearer.
    """
    # empty counts as unset, and survives being merged over os.environ
    return dict(os.environ, PYTHONPYCACHEPREFIX=cache_dir, PYTHONDONTWRITEBYTECODE="")


def drop_partitions(dev: str) -> None:
    """Remove a loop device's partitions: they survive detaching and reattaching."""
    subprocess.run(["partx", "-d", dev], capture_output=True)
