"""An agent process run from a chosen copy of the source tree, for before/after runs.

``--compare DIR`` in bench/limits.py and bench/peak_rss.py starts the agent
from DIR (a copy of the code before a change) in turn with this tree's, so
both are measured against the same server, device and machine load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from bench.common import ROOT, free_port, wait_http
from bench.harness import python_env


@contextlib.contextmanager
def agent_in(root: str = ROOT, pycache: str = "/dev/shm/deploy-agent-bench-pycache"
             ) -> Iterator[tuple[subprocess.Popen, str]]:
    """``serve --standalone`` from source tree ``root``; yields the process and its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--standalone",
                             "--include-loop-devices", "--listen", "127.0.0.1",
                             "--port", str(port)], cwd=root, env=python_env(pycache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/status")
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree(path: str | None) -> list[tuple[str, str]]:
    """(label, root) for this tree and, when given, the compared one."""
    return [("", ROOT)] + ([("compared ", os.path.abspath(path))] if path else [])
