#!/usr/bin/env python3
"""Idle memory of a real agent process after the commands Ironic sends it.

The sequence follows a cleaning then a deploy that fails, as a conductor
drives them: the inventory (inspection and cleaning both ask for it), clean
steps listed, deploy steps listed, ``write_image`` failing on an image URL
nobody serves, the partition UUIDs, and the logs the conductor collects after
a failure.  Nothing here touches a disk: the agent runs with ``--standalone``
on 127.0.0.1 without loop devices, so there is no disk to pick.

``python bench/idle.py`` prints RSS at start and after the sequence (median
of ``--runs`` processes), plus ``--modules``: the modules loaded at idle that
a bare Flask app does not load, heaviest import first.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import free_port, status_mib, stop  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTLE_S = 1.0

# python -c: dump sys.modules to $1 on SIGUSR2, then run the agent unchanged
PROBE = """
import runpy, signal, sys
out = sys.argv.pop(1)
def dump(*_):
    with open(out, "w") as f:
        f.write("\\n".join(sorted(k for k, v in sys.modules.items() if v is not None)))
signal.signal(signal.SIGUSR2, dump)
sys.argv[0] = "agent.cli"
runpy.run_module("agent.cli", run_name="__main__", alter_sys=True)
"""


def rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


def agent_env(extra: dict[str, str] | None = None, tree: str = REPO) -> dict[str, str]:
    """The environment of an agent run from the source ``tree`` (another checkout to compare)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


def agent_argv(port: int, cmdline: str, probe: str | None = None) -> list[str]:
    head = [sys.executable, "-c", PROBE, probe] if probe else [sys.executable, "-m", "agent.cli"]
    return [*head, "serve", "--standalone", "--listen", "127.0.0.1", "--port", str(port),
            "--cmdline", cmdline]


@contextmanager
def running(argv: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    # -m puts the working directory first on sys.path: run from the tree under test
    tree = env["PYTHONPATH"].split(os.pathsep)[0]
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/status"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        yield proc
    finally:
        stop(proc)


def _run(session: requests.Session, base: str, name: str, params: dict[str, Any]) -> str:
    r = session.post(f"{base}/v1/commands/", params={"wait": "true"},
                     json={"name": name, "params": params}, timeout=120)
    r.raise_for_status()
    result = r.json()
    while result.get("command_status") == "RUNNING":
        time.sleep(0.05)
        result = session.get(f"{base}/v1/commands/{result['id']}", timeout=30).json()
    return str(result.get("command_status"))


SEQUENCE = ("poll.get_hardware_info", "clean.get_clean_steps", "deploy.get_deploy_steps",
            "deploy.execute_deploy_step", "standby.get_partition_uuids",
            "log.collect_system_logs")


def _params(name: str, dead_url: str) -> dict[str, Any]:
    node = {"uuid": "1be26c0b-03f2-4d2d-ae87-c02d7f33c781", "properties": {},
            "driver_info": {}, "instance_info": {}}
    if name.endswith("_steps"):
        return {"node": node, "ports": []}
    if name == "deploy.execute_deploy_step":
        image_info = {"id": "bench", "urls": [dead_url], "disk_format": "raw",
                      "container_format": "bare", "stream_raw_images": True,
                      "os_hash_algo": "sha256", "os_hash_value": "0" * 64}
        return {"step": {"interface": "deploy", "step": "write_image", "priority": 80,
                         "args": {"image_info": image_info}}, "node": node, "ports": []}
    return {}


def typical_sequence(base: str) -> dict[str, str]:
    """The commands a conductor sends through a cleaning and a failed deploy; their statuses."""
    dead = f"http://127.0.0.1:{free_port()}/image.raw"   # nothing listens there
    statuses = {}
    with requests.Session() as s:
        s.get(f"{base}/v1/status", timeout=30).raise_for_status()
        for name in SEQUENCE:
            statuses[name] = _run(s, base, name, _params(name, dead))
        s.get(f"{base}/v1/commands/", timeout=30).raise_for_status()
    return statuses


def one_run(cmdline: str, env: dict[str, str], settle: float,
            probe: str | None = None) -> tuple[float, float, dict[str, str]]:
    port = free_port()
    with running(agent_argv(port, cmdline, probe), port, env) as proc:
        time.sleep(settle)
        start = rss_mib(proc.pid)
        statuses = typical_sequence(f"http://127.0.0.1:{port}")
        time.sleep(settle)
        after = rss_mib(proc.pid)
        if probe:
            proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not (os.path.exists(probe) and os.path.getsize(probe)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the probe did not write its module list")
                time.sleep(0.05)
    return start, after, statuses


def baseline_modules() -> set[str]:
    code = ("import sys; from cheroot import wsgi; from flask import Flask; import requests;"
            "print('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def _median(runs: list[tuple[float, float, dict[str, str]]], i: int) -> float:
    return statistics.median(r[i] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=SETTLE_S)
    parser.add_argument("--modules", action="store_true",
                        help="list the modules loaded at idle beyond flask+cheroot+requests")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the agent (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--compare", metavar="TREE",
                        help="also run the agent from this source tree (e.g. an export of "
                             "the previous commit), alternating, and print the ratio")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    trees = {"this tree": agent_env(extra)}
    if args.compare:
        trees[args.compare] = agent_env(extra, os.path.abspath(args.compare))
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        cmdline = os.path.join(tmp, "cmdline")
        with open(cmdline, "w") as f:
            f.write("\n")
        runs: dict[str, list[tuple[float, float, dict[str, str]]]] = {t: [] for t in trees}
        for env in trees.values():
            one_run(cmdline, env, 0.0)      # warm bytecode and page caches
        for _ in range(args.runs):
            for label, env in trees.items():
                runs[label].append(one_run(cmdline, env, args.settle))
        for label, done in runs.items():
            print(f"{label}: idle RSS (MiB), {args.runs} agent processes, medians: "
                  f"at start {_median(done, 0):.1f}, after commands {_median(done, 1):.1f}")
            print("  runs (start/after): " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b, _ in done))
            print("  commands: " + ", ".join(f"{k}={v}" for k, v in done[0][2].items()))
        if args.compare:
            mine, other = runs["this tree"], runs[args.compare]
            print(f"ratio this tree / {args.compare}: at start "
                  f"{_median(mine, 0) / _median(other, 0):.2f}, after commands "
                  f"{_median(mine, 1) / _median(other, 1):.2f}")
        if args.modules:
            probe = os.path.join(tmp, "modules.txt")
            one_run(cmdline, trees["this tree"], 0.2, probe)
            with open(probe) as f:
                loaded = set(f.read().split())
            extra_mods = sorted(loaded - baseline_modules())
            tops = sorted({m.split(".")[0] for m in extra_mods})
            print(f"{len(loaded)} modules at idle, {len(extra_mods)} beyond "
                  f"flask+cheroot+requests; top-level packages: {' '.join(tops)}")
            print("agent modules: " + " ".join(m for m in extra_mods if m.startswith("agent")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
