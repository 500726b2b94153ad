"""Where the clock sync runs: at agent start before any traffic to Ironic, and before power-off."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from agent import config
from agent.hardware import power
from tests.unit.test_clock import Responder, answer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def controller() -> Iterator[tuple[str, list[str]]]:
    """A stand-in Ironic that answers 404 to everything and records what reached it."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append(f"http {self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_POST = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_agent_asks_ntp_before_it_talks_to_ironic(tmp_path, controller) -> None:
    api_url, seen = controller
    ntp = Responder(lambda req: (seen.append("ntp"), answer(req, skew=42.0))[1])
    try:
        cmdline = tmp_path / "cmdline"
        cmdline.write_text(f"ipa-api-url={api_url} ipa-ntp-server={ntp.address} "
                           "ipa-advertise-host=127.0.0.1 ipa-lookup-timeout=1 "
                           "ipa-lookup-interval=0.1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
        env["PYTHONPATH"] = ROOT
        # --ramdisk false: the agent only logs the offset, this machine's clock stays
        proc = subprocess.run(
            [sys.executable, "-m", "agent.cli", "serve", "--cmdline", str(cmdline),
             "--listen", "127.0.0.1", "--port", str(_free_port()), "--ramdisk", "false"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        ntp.close()
    log = proc.stderr
    assert proc.returncode == 1, log          # the lookup fails: nobody answers it
    assert seen and seen[0] == "ntp", seen
    assert any(s.startswith("http ") for s in seen), seen
    assert "says this clock is off by +42" in log and "not a deploy ramdisk" in log


def test_power_off_syncs_the_clock_before_it_flushes_and_powers_off(monkeypatch) -> None:
    # nothing here may reach the real power path of this machine: the init
    # system call, the sysrq fallback and its timer thread are all recorders
    events: list[Any] = []

    class Timer:
        def __init__(self, target: Any, daemon: bool) -> None:
            pass

        def start(self) -> None:
            events.append("fallback armed")

    monkeypatch.setattr(power, "threading", types.SimpleNamespace(Thread=Timer))
    monkeypatch.setattr(power, "_sysrq", lambda letter: events.append(f"sysrq {letter}"))
    monkeypatch.setattr(power.tools, "run", lambda *argv, **kw: events.append(argv))
    monkeypatch.setattr(power, "flush_all", lambda: events.append("flush"))
    monkeypatch.setattr(power.clock, "before_power_off",
                        lambda cfg: events.append(("clock", cfg.ntp_server)))
    cfg = config.load(env={}, read_proc=False, cmdline="ipa-ntp-server=192.0.2.1",
                      flags={"ramdisk": "true"})
    power.shutdown(reboot=False, config=cfg)
    assert events == [("clock", "192.0.2.1"), "flush", "fallback armed",
                      ("systemctl", "poweroff", "--no-block")]
