#!/usr/bin/env python3
"""The agent's peak RSS while streaming, per image format, through a real agent process.

For every format a fresh agent (``serve --standalone``) runs
``standby.prepare_image`` for bench/stream.py's realistic raw image, or that
image compressed (gzip, zstd, xz, bzip2), served from 127.0.0.1 onto a
tmpfs-backed loop device.  Printed per format: the agent's RSS when idle
just before the command, its peak RSS over its whole life (VmHWM, which is
what a ramdisk's memory has to hold), and the difference the stream added.
``xz`` is decompressed by the ``xz`` tool in a child process when installed,
whose memory is not in the agent's VmHWM.

Run as root: python bench/peak_rss.py [--formats raw,gzip,zstd,xz,bzip2]
[--size-mib N] [--runs N] [--compare DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, status_mib, tmpfs_loop  # noqa: E402
from bench.harness import drop_partitions, http_server  # noqa: E402
from bench.stream_profile import image_for  # noqa: E402
from bench.trees import agent_in, tree  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench-rss"
FORMATS = ("raw", "gzip", "zstd", "xz", "bzip2")


def one_run(url: str, name: str, dev: str, digest: str, root: str) -> dict[str, float]:
    from agent.driver.client import AgentClient
    drop_partitions(dev)
    with agent_in(root, os.path.join(WORK, "pycache")) as (proc, agent_url):
        client = AgentClient(agent_url)
        idle = status_mib(proc.pid, "VmRSS")
        start = time.perf_counter()
        result = client.post("standby.prepare_image", {
            "image_info": {"id": name, "urls": [f"{url}/{name}"],
                           "os_hash_algo": "sha256", "os_hash_value": digest},
            "node": {"properties": {"root_device": {"name": dev}}}})
        result = client.get(result["id"], wait=True)
        seconds = time.perf_counter() - start
        if result["command_status"] != "SUCCEEDED":
            raise RuntimeError(json.dumps(result["command_error"]))
        peak = status_mib(proc.pid, "VmHWM")
    return {"idle": idle, "peak": peak, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--compare", metavar="DIR",
                    help="also run the agent from source tree DIR, in turn with this tree")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the target is a loop device")
    os.makedirs(WORK, exist_ok=True)
    os.chdir(ROOT)
    www = os.path.join(WORK, f"www-{os.getpid()}")
    os.makedirs(www, exist_ok=True)
    formats = args.formats.split(",")
    names = {}
    for fmt in formats:
        image = image_for(fmt, args.size_mib, "realistic")
        names[fmt] = os.path.basename(image)
        shutil.copyfile(image, os.path.join(www, names[fmt]))
    digests = {}
    for fmt, name in names.items():
        with open(os.path.join(www, name), "rb") as f:
            digests[fmt] = hashlib.file_digest(f, "sha256").hexdigest()
    trees = tree(args.compare)
    figures: dict[str, list[dict[str, float]]] = {
        label + fmt: [] for fmt in formats for label, _ in trees}
    try:
        with http_server(www, args.server) as url, \
                tmpfs_loop(args.size_mib * MiB + 64 * MiB, www) as dev:
            for i in range(args.runs):
                for fmt in formats:
                    for label, root in trees if i % 2 == 0 else trees[::-1]:
                        figures[label + fmt].append(
                            one_run(url, names[fmt], dev, digests[fmt], root))
            drop_partitions(dev)
    finally:
        shutil.rmtree(www, ignore_errors=True)
    print(f"# peak RSS while streaming, {args.size_mib} MiB realistic image, median of "
          f"{args.runs} fresh agent(s) per format")
    print("| format | idle RSS MiB | peak RSS MiB | added by the stream MiB | MB/s |")
    print("|---|---|---|---|---|")
    for key in figures:
        runs = figures[key]
        idle = statistics.median(r["idle"] for r in runs)
        peak = statistics.median(r["peak"] for r in runs)
        rate = args.size_mib * MiB / statistics.median(r["seconds"] for r in runs) / 1e6
        print(f"| {key} | {idle:.1f} | {peak:.1f} | {peak - idle:.1f} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
