#!/usr/bin/env python3
"""Startup time and idle memory of deploy-agent against a minimal Flask app.

Both processes use this interpreter and are served by cheroot in the same way,
so the ratio shows what the agent adds on top of the web stack.  "ready" is
the time from spawning the process until ``GET /v1/status`` answers 200;
"idle RSS" is the resident set size after it has sat idle for a moment.

Targets (issue 2): ready < 1 s, idle RSS < 40 MiB.  Exit status 1 when the
agent's median misses one.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

READY_TARGET_S = 1.0
RSS_TARGET_MIB = 40.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the baseline: Flask's smallest useful app behind the same cheroot server
BASELINE_APP = """
import sys, time
from cheroot import wsgi
from flask import Flask, jsonify

app = Flask("baseline")
started = time.time()

@app.get("/v1/status")
def status():
    return jsonify(started_at=started, version="baseline")

server = wsgi.Server(("127.0.0.1", int(sys.argv[1])), app, numthreads=8)
server.prepare()
server.serve()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, started: float, limit: float) -> float:
    url = f"http://127.0.0.1:{port}/v1/status"
    while time.perf_counter() - started < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url} did not answer within {limit:g}s")


def measure(argv: list[str], port: int, settle: float, env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = wait_ready(proc, port, started, 30.0)
        time.sleep(settle)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return ready, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="idle seconds before reading RSS")
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        empty_cmdline = os.path.join(tmp, "cmdline")
        with open(empty_cmdline, "w") as f:
            f.write("\n")
        baseline = os.path.join(tmp, "baseline_app.py")
        with open(baseline, "w") as f:
            f.write(BASELINE_APP)

        def agent_argv(port: int) -> list[str]:
            return [sys.executable, "-m", "agent.cli", "serve", "--standalone",
                    "--listen", "127.0.0.1", "--port", str(port), "--cmdline", empty_cmdline]

        def baseline_argv(port: int) -> list[str]:
            return [sys.executable, baseline, str(port)]

        # one unmeasured run each so both start with warm bytecode and page caches
        for make in (agent_argv, baseline_argv):
            port = free_port()
            measure(make(port), port, 0.0, env)

        samples: dict[str, list[tuple[float, float]]] = {"agent": [], "baseline": []}
        for _ in range(args.runs):
            for label, make in (("agent", agent_argv), ("baseline", baseline_argv)):
                port = free_port()
                samples[label].append(measure(make(port), port, args.settle, env))

    med = {label: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
           for label, runs in samples.items()}
    print(f"deploy-agent startup vs minimal Flask+cheroot app, {args.runs} runs, medians "
          f"(python {sys.version.split()[0]})")
    print(f"{'metric':<16}{'deploy-agent':>14}{'baseline':>12}{'ratio':>8}{'target':>10}")
    ready_a, rss_a = med["agent"]
    ready_b, rss_b = med["baseline"]
    print(f"{'API ready (s)':<16}{ready_a:>14.3f}{ready_b:>12.3f}{ready_a / ready_b:>8.2f}"
          f"{'< ' + format(READY_TARGET_S, 'g'):>10}")
    print(f"{'idle RSS (MiB)':<16}{rss_a:>14.1f}{rss_b:>12.1f}{rss_a / rss_b:>8.2f}"
          f"{'< ' + format(RSS_TARGET_MIB, 'g'):>10}")
    print("agent runs (ready s / RSS MiB): "
          + ", ".join(f"{r:.3f}/{m:.1f}" for r, m in samples["agent"]))
    missed = [name for name, ok in (("ready", ready_a < READY_TARGET_S),
                                    ("rss", rss_a < RSS_TARGET_MIB)) if not ok]
    print("targets met" if not missed else f"targets MISSED: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
