"""Start a real agent process that boots against an in-process stand-in controller.

The agent gets its kernel parameters from a ``--cmdline`` file, exactly as a
ramdisk would from /proc/cmdline, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TESTEXT = os.path.join(ROOT, "tests", "plugins", "testext")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    def __init__(self, tmp_path: Any, api_url: str, *, params: dict[str, str] | None = None,
                 flags: list[str] | None = None, name: str = "agent") -> None:
        self.port = free_port()
        self.log_path = os.path.join(str(tmp_path), f"{name}.log")
        cmdline = {"ipa-api-url": api_url, "ipa-advertise-host": "127.0.0.1",
                   "ipa-lookup-interval": "0.1", "ipa-global-request-id": "req-test-8",
                   **(params or {})}
        self.cmdline_path = os.path.join(str(tmp_path), f"{name}.cmdline")
        with open(self.cmdline_path, "w", encoding="utf-8") as f:
            f.write("BOOT_IMAGE=/vmlinuz " + " ".join(f"{k}={v}" for k, v in cmdline.items())
                    + "\n")
        self.argv = [sys.executable, "-m", "agent.cli", "serve", "--cmdline", self.cmdline_path,
                     "--listen", "127.0.0.1", "--port", str(self.port), "--ramdisk", "false",
                     *(flags or [])]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> AgentProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTEXT]))
        for key in [k for k in env if k.startswith("DEPLOY_AGENT_")]:
            del env[key]
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"agent log never showed {text!r}:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
