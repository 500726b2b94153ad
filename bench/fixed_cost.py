#!/usr/bin/env python3
"""Where a small deploy spends its time outside the byte stream, phase by phase.

One ``deploy-agent deploy`` of a whole-disk GPT image with a config drive,
through a real agent process (``serve --standalone``) onto a tmpfs-backed loop
device, the image served by nginx (or Python's http.server) on 127.0.0.1.
The phases come from the agent's own log timestamps (``--debug``) and from the
moments the driver's progress lines reach this process, all on one clock:

    client imports        process start until the driver's first HTTP request
    requests before step  status, command list, get_deploy_steps (the agent loads its
                          hardware managers and imports the deploy code here)
    step setup            write_image accepted until the image stream starts (disk
                          choice, config drive build, reaching the image)
    stream                the byte stream itself (the agent's own figure)
    stream bookkeeping    the rest of the time between the two stream log lines
    after stream          backup GPT, partition re-read, config drive partition and write
    report (polling)      write_image finished until the driver has seen it (--poll)
    sync                  standby.get_partition_uuids and standby.sync
    client return         the driver's summary until its main() returns (report printed)
    interpreter exit      main() returned until the process has exited

Python runs with a bytecode cache (outside the tree), as in the ramdisk.
``--compare DIR`` runs the same deploys, interleaved, from another copy of the
code, so before and after come from the same run.

Run as root: python bench/fixed_cost.py [--runs N] [--poll S] [--image-mib N]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, free_port, tmpfs_loop, wait_http  # noqa: E402
from bench.harness import drop_partitions, http_server, python_env  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench-fixed"
PYCACHE = os.path.join(WORK, "pycache")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ ([\w.]+): (.*)$")

# (phase name, agent log pattern that ends it); the order is the deploy's order
AGENT_MARKS = [
    ("first step", r"running deploy step write_image"),
    ("stream start", r"agent\.imaging\.deploy: image .* is "),
    ("stream end", r"agent\.imaging\.deploy: image .* written to "),
    ("step done", r"deploy step write_image finished"),
    ("synced", r"synced filesystems"),
]


# `deploy-agent deploy` with every HTTP request it makes timed on this machine's clock
TRACED_CLIENT = """
import sys, time
import requests
_request = requests.Session.request
def _traced(self, method, url, *args, **kwargs):
    start = time.time()
    try:
        return _request(self, method, url, *args, **kwargs)
    finally:
        name = (kwargs.get("json") or {}).get("name", "") if method == "POST" else ""
        path = url.split("/", 3)[-1].split("?")[0]
        sys.stderr.write(f"@http {start:.6f} {time.time():.6f} {method} /{path} {name}\\n")
requests.Session.request = _traced
from agent.cli import main
code = main(sys.argv[1:])
sys.stderr.write(f"@returned {time.time():.6f}\\n")
sys.exit(code)
"""


def build_image(path: str, size: int) -> None:
    """A GPT disk image: one partition over the whole image, 16 MiB of random data in it."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", path], input="label: gpt\nstart=2048\n", text=True,
                   check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(os.urandom(min(16 * MiB, size - 3 * MiB)))


def _parse_log(path: str) -> list[tuple[float, str]]:
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip("\n"))
            if m:
                stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                out.append((stamp.timestamp(), f"{m.group(2)}: {m.group(3)}"))
    return out


def _first(lines: list[tuple[float, str]], pattern: str, after: float) -> float | None:
    rx = re.compile(pattern)
    return next((t for t, text in lines if t >= after and rx.search(text)), None)


def one_deploy(url: str, image: str, checksum: str, dev: str, poll: float,
               workdir: str, root: str = ROOT) -> dict:
    """One deploy through a fresh agent run from source tree ``root``; phase timings in s."""
    port = free_port()
    log = os.path.join(workdir, "agent.log")
    if os.path.exists(log):
        os.unlink(log)
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--standalone", "--include-loop-devices",
         "--listen", "127.0.0.1", "--port", str(port), "--debug", "--log-file", log],
        cwd=root, env=python_env(PYCACHE), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        agent_url = f"http://127.0.0.1:{port}"
        wait_http(agent_url + "/v1/status")
        # `deploy-agent deploy`, from the same tree as the agent
        argv = [sys.executable, "-c", TRACED_CLIENT, "deploy", "--agent", agent_url,
                "--image", f"{url}/{image}", "--checksum", f"sha256:{checksum}", "--root-device",
                json.dumps({"name": dev}), "--no-power-off", "--poll", str(poll),
                "--configdrive", json.dumps({"meta_data": {"uuid": "bench-node",
                                                            "hostname": "bench"}})]
        events: list[tuple[float, str]] = []
        start = time.time()
        client = subprocess.Popen(argv, cwd=root, env=python_env(PYCACHE), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

        def read_events() -> None:
            assert client.stderr is not None
            for line in client.stderr:
                events.append((time.time(), line.strip()))
        reader = threading.Thread(target=read_events)
        reader.start()
        out = client.stdout.read() if client.stdout else ""
        client.wait()
        reader.join()
        end = time.time()
        if client.returncode:
            raise RuntimeError(f"deploy failed ({client.returncode}): "
                               + " | ".join(e for _, e in events[-5:]))
    finally:
        agent.terminate()
        agent.wait(10)
    lines = _parse_log(log)
    marks = {"start": start}
    for name, pattern in AGENT_MARKS:
        found = _first(lines, pattern, start - 0.002)
        if found is None:
            raise RuntimeError(f"the agent log has no line for {name!r}")
        marks[name] = found
    http = [(float(e.split()[1]), float(e.split()[2]), " ".join(e.split()[3:]))
            for _, e in events if e.startswith("@http ")]
    if not http:
        raise RuntimeError("the driver made no HTTP request")
    seen = next((t for t, e in events if e.startswith("deploy: write_image:")), None)
    summary = next((t for t, e in events if e.startswith("deploy: deploy finished")), None)
    returned = next((float(e.split()[1]) for _, e in events if e.startswith("@returned ")),
                    None)
    if seen is None or summary is None or returned is None:
        raise RuntimeError("the driver printed no write_image result or summary")
    report = json.loads(out)["deploy_result"]
    stream = float(report["write"]["seconds"])
    # the agent logs with millisecond stamps; the stream's own figure is finer
    phases = {
        "client imports": http[0][0] - start,
        "requests before step": marks["first step"] - http[0][0],
        "step setup": marks["stream start"] - marks["first step"],
        "stream": stream,
        "after stream": marks["step done"] - marks["stream end"],
        "report (polling)": seen - marks["step done"],
        "sync": summary - seen,
        "client return": returned - summary,
        "interpreter exit": end - returned,
    }
    # what the stream's own figure and the log marks do not account for: the
    # image's head inspection and report building around the stream
    phases["stream bookkeeping"] = max(0.0, (marks["stream end"] - marks["stream start"])
                                       - stream)
    phases["total"] = end - start
    phases["outside the stream"] = phases["total"] - stream
    phases["step detail"] = _step_detail(lines, marks)
    phases["http"] = http
    return phases


def _step_detail(lines: list[tuple[float, str]], marks: dict[str, float]) -> str:
    """The agent's log lines of the write_image step, with their offsets."""
    t0 = marks["first step"]
    rows = [f"+{t - t0:6.3f}s {text[:110]}" for t, text in lines
            if t0 <= t <= marks["step done"]]
    return "\n".join(rows)


PHASES = ["client imports", "requests before step", "step setup", "stream",
          "stream bookkeeping", "after stream", "report (polling)", "sync", "client return",
          "interpreter exit", "outside the stream", "total"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--poll", type=float, default=2.0,
                    help="the driver's --poll (its default is 2 s)")
    ap.add_argument("--image-mib", type=int, default=64)
    ap.add_argument("--compare", metavar="DIR",
                    help="also deploy with the agent from source tree DIR (a copy of the code "
                         "before a change), alternating with this tree, same image and server")
    ap.add_argument("--detail", action="store_true",
                    help="print the agent's log lines of write_image and the driver's requests "
                         "of the last run")
    args = ap.parse_args(argv)
    os.makedirs(WORK, exist_ok=True)
    www = os.path.join(WORK, "www")
    os.makedirs(www, exist_ok=True)
    image = "image.raw"
    path = os.path.join(www, image)
    build_image(path, args.image_mib * MiB)
    with open(path, "rb") as f:
        checksum = hashlib.file_digest(f, "sha256").hexdigest()
    trees = [("this tree", ROOT)] + ([("compared", os.path.abspath(args.compare))]
                                     if args.compare else [])
    runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
    # room after the image for the 64 MiB config drive partition
    disk_size = args.image_mib * MiB + 80 * MiB
    with http_server(www) as url:
        for i in range(args.runs + 1):
            for label, root in trees:
                with tmpfs_loop(disk_size, WORK) as dev:
                    # a loop device can come with partitions left by its last user
                    drop_partitions(dev)
                    try:
                        result = one_deploy(url, image, checksum, dev, args.poll, WORK, root)
                    finally:
                        drop_partitions(dev)
                    if i:   # the first round only fills the bytecode cache
                        runs[label].append(result)
    shutil.rmtree(www, ignore_errors=True)
    print(f"# {args.image_mib} MiB whole-disk GPT image + config drive, deploy-agent deploy "
          f"--poll {args.poll:g}, {args.runs} run(s); seconds")
    for label, root in trees:
        print(f"\n{label}: {root}")
        print_table(runs[label])
        if args.detail:
            last = runs[label][-1]
            print(f"\nagent, write_image step (last run, {label}):\n"
                  + last["step detail"])
            t0 = last["http"][0][0]
            print(f"\ndriver HTTP requests (last run, {label}):")
            for begin, end, what in last["http"]:
                print(f"+{begin - t0:6.3f}s {end - begin:6.3f}s {what}")
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def print_table(runs: list[dict]) -> None:
    print("| phase | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |")
    print("|---|" + "---|" * (len(runs) + 1))
    for name in PHASES:
        print(f"| {name} | " + " | ".join(f"{r[name]:.3f}" for r in runs)
              + f" | {median([r[name] for r in runs]):.3f} |")


if __name__ == "__main__":
    sys.exit(main())
