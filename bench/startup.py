#!/usr/bin/env python3
"""Startup time and idle memory of deploy-agent against a minimal Flask app.

Both processes use this interpreter and are served by cheroot in the same way,
so the ratio shows what the agent adds on top of the web stack.  "ready" is
the time from spawning the process until ``GET /v1/status`` answers 200;
"idle RSS" is the resident set size after it has sat idle for a moment, at
start and again after the commands a conductor sends through a cleaning and a
failed deploy (bench/idle.py; the baseline answers as many status requests).
The "ramdisk env" rows run the agent with the environment the ramdisk's unit
gives it (MALLOC_ARENA_MAX, and PYTHONOPTIMIZE=2 with bytecode compiled for it,
as install.d/60-deploy-agent-venv does).

``--importtime N`` also lists the N slowest top-level imports of one start
(``python -X importtime``, cumulative microseconds).

Targets (issues 2 and 21): ready < 1 s, idle RSS after commands <= 40 MiB in
the ramdisk env.  Exit status 1 when the agent's median misses one.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import idle  # noqa: E402

READY_TARGET_S = 1.0
RSS_TARGET_MIB = 40.0
UNIT = os.path.join(REPO, "elements/deploy-agent/static/etc/systemd/system/deploy-agent.service")

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


def ramdisk_env(cache_dir: str) -> dict[str, str]:
    """The unit's Environment= settings, plus what its EnvironmentFile holds in the image."""
    env = {}
    with open(UNIT) as f:
        for line in f:
            m = re.match(r"Environment=(\w+)=(\S*)", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    env["PYTHONOPTIMIZE"] = "2"             # written by install.d/60-deploy-agent-venv
    env["PYTHONPYCACHEPREFIX"] = cache_dir  # its -OO bytecode, compiled by the warm-up run
    return env


def measure(argv: list[str], port: int, settle: float, env: dict[str, str],
            commands: bool) -> tuple[float, float, float]:
    """(seconds to ready, RSS MiB at start, RSS MiB after the command sequence)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = wait_ready(proc, port, started, 30.0)
        time.sleep(settle)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        url = f"http://127.0.0.1:{port}"
        if commands:
            idle.typical_sequence(url)
        else:
            for _ in range(len(idle.SEQUENCE) + 2):
                urllib.request.urlopen(url + "/v1/status", timeout=10).close()
        time.sleep(settle)
        after = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return ready, rss, after


def import_offenders(argv: list[str], port: int, env: dict[str, str], top: int) -> list[str]:
    """The slowest top-level imports of one start, from ``-X importtime``."""
    proc = subprocess.Popen([argv[0], "-X", "importtime", *argv[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, port, time.perf_counter(), 30.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(2)) <= 1:      # top level: one space after the bar
            rows.append((int(m.group(1)), m.group(3)))
    rows.sort(reverse=True)
    total = sum(us for us, _ in rows)
    return [f"total {total / 1000:.0f} ms in {len(rows)} top-level imports"] + [
        f"{us / 1000:8.1f} ms  {name}" for us, name in rows[:top]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="idle seconds before reading RSS")
    parser.add_argument("--importtime", type=int, default=0, metavar="N",
                        help="also list the N slowest top-level imports of one start")
    args = parser.parse_args()

    env = idle.agent_env()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        empty_cmdline = os.path.join(tmp, "cmdline")
        with open(empty_cmdline, "w") as f:
            f.write("\n")
        baseline = os.path.join(tmp, "baseline_app.py")
        with open(baseline, "w") as f:
            f.write(BASELINE_APP)
        rd_env = {**env, **ramdisk_env(os.path.join(tmp, "pycache"))}

        def agent_argv(port: int) -> list[str]:
            return idle.agent_argv(port, empty_cmdline)

        def baseline_argv(port: int) -> list[str]:
            return [sys.executable, baseline, str(port)]

        kinds = {"agent": (agent_argv, env, True), "agent, ramdisk env": (agent_argv, rd_env, True),
                 "baseline": (baseline_argv, env, False)}
        # one unmeasured run each so all start with warm bytecode and page caches
        for make, kind_env, commands in kinds.values():
            port = free_port()
            measure(make(port), port, 0.0, kind_env, commands)

        samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for label, (make, kind_env, commands) in kinds.items():
                port = free_port()
                samples[label].append(measure(make(port), port, args.settle, kind_env,
                                              commands))
        offenders = []
        if args.importtime:
            port = free_port()
            offenders = import_offenders(agent_argv(port), port, env, args.importtime)

    med = {label: tuple(statistics.median(s[i] for s in runs) for i in range(3))
           for label, runs in samples.items()}
    print(f"deploy-agent startup vs minimal Flask+cheroot app, {args.runs} runs, medians "
          f"(python {sys.version.split()[0]})")
    print(f"{'metric':<34}{'deploy-agent':>14}{'baseline':>10}{'ratio':>8}{'target':>8}")
    base = med["baseline"]
    rows = [("API ready (s)", med["agent"][0], base[0], f"< {READY_TARGET_S:g}", ".3f"),
            ("idle RSS at start (MiB)", med["agent"][1], base[1], "", ".1f"),
            ("idle RSS after commands (MiB)", med["agent"][2], base[2], "", ".1f"),
            ("  ramdisk env: API ready (s)", med["agent, ramdisk env"][0], base[0], "", ".3f"),
            ("  ramdisk env: RSS at start", med["agent, ramdisk env"][1], base[1], "", ".1f"),
            ("  ramdisk env: RSS after commands", med["agent, ramdisk env"][2], base[2],
             f"<= {RSS_TARGET_MIB:g}", ".1f")]
    for name, value, ref, target, fmt in rows:
        print(f"{name:<34}{value:>14{fmt}}{ref:>10{fmt}}{value / ref:>8.2f}{target:>8}")
    for label in ("agent", "agent, ramdisk env"):
        print(f"{label} runs (ready s / RSS MiB start / after): "
              + ", ".join(f"{r:.3f}/{a:.1f}/{b:.1f}" for r, a, b in samples[label]))
    for line in offenders:
        print(line)
    missed = [name for name, ok in (
        ("ready", med["agent"][0] < READY_TARGET_S),
        ("rss", med["agent, ramdisk env"][2] <= RSS_TARGET_MIB)) if not ok]
    print("targets met" if not missed else f"targets MISSED: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
