#!/usr/bin/env python3
"""The agent's raw deploy rate against the machine's limits, measured in one run.

Limits (each on one core, with the agent's own 2 MiB chunking):

    sha256          hashlib over a large in-memory buffer, 2 MiB per update
    HTTP download   the agent's HTTPSource reading a file from nginx (or Python's
                    http.server) on 127.0.0.1 into 2 MiB buffers, discarded
    O_DIRECT write  2 MiB sequential O_DIRECT writes to the target (a tmpfs-backed
                    loop device) and a final fsync; the second of two passes

and then the agent end to end: a real agent process (``serve --standalone``)
runs ``standby.prepare_image`` for the same raw image from the same server onto
the same loop device, from the request until SUCCEEDED is reported (the
writer's fsync included), as bench/stream.py does.  The agent's rate is shown
as a ratio to every limit and to the slowest of them.  ``curl -o /dev/null``
is shown for scale (it is not a limit of the Python path).

Rates are image bytes per second.  With a realistic image (``--content
realistic``, bench/stream.py's GPT + ext4 image), zero runs are punched rather
than written, so the agent can beat the O_DIRECT row; sha256 and the download
see every byte and bound the agent whatever the content.

Run as root: python bench/limits.py [--size-mib N] [--runs N] [--content random]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, agent_process, tmpfs_loop  # noqa: E402
from bench.harness import drop_partitions, http_server, python_env  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench-limits"
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
HASH_BUFFER = 64 * MiB


def chunk_size() -> int:
    from agent.imaging import plumbing
    return plumbing.BUFFER_SIZE


def sha256_rate(size: int) -> float:
    """Seconds to sha256 ``size`` bytes on this core, fed in the agent's chunk size."""
    chunk = chunk_size()
    data = memoryview(os.urandom(min(HASH_BUFFER, size)))
    hasher = hashlib.sha256()
    start = time.perf_counter()
    done = 0
    while done < size:
        for off in range(0, len(data), chunk):
            piece = data[off:off + min(chunk, size - done)]
            hasher.update(piece)
            done += len(piece)
            if done >= size:
                break
    hasher.digest()
    return time.perf_counter() - start


def download_seconds(url: str, size: int) -> float:
    """Seconds for the agent's HTTPSource to read ``url`` into 2 MiB buffers, discarded."""
    from agent.imaging import plumbing
    from agent.imaging.source import HTTPSource
    buf = plumbing.Buffer(chunk_size())
    source = HTTPSource([url], retries=0)
    start = time.perf_counter()
    source.open()
    received = 0
    try:
        while True:
            n = plumbing.fill(source.readinto, buf)
            received += n
            if n < len(buf.view):
                break
    finally:
        source.close()
    seconds = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"downloaded {received} bytes, expected {size}")
    return seconds


def curl_seconds(url: str) -> float | None:
    if not shutil.which("curl"):
        return None
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - start


def direct_write_seconds(dev: str, size: int) -> float:
    """Seconds for 2 MiB sequential O_DIRECT writes of ``size`` bytes and the fsync."""
    chunk = chunk_size()
    buf = mmap.mmap(-1, chunk)           # page aligned, as O_DIRECT needs
    buf.write(os.urandom(chunk))         # no zero pages the device could shortcut
    view = memoryview(buf)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        # Timed on the second of two passes: the agent punches its zero runs, which
        # frees the tmpfs pages behind the loop device, and a first pass then pays
        # for allocating them again, a cost a real disk does not have.
        for _ in range(2):
            start = time.perf_counter()
            for off in range(0, size, chunk):
                n = min(chunk, size - off)
                os.pwrite(fd, view[:n], off)
            os.fsync(fd)
            seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        view.release()
        buf.close()
    return seconds


def agent_seconds(url: str, name: str, dev: str, checksum: str) -> tuple[float, float]:
    """standby.prepare_image through a real agent process: (request to SUCCEEDED, the
    agent's own figure for the stream alone)."""
    from agent.driver.client import AgentClient
    with agent_process(python_env(os.path.join(WORK, "pycache"))) as (_proc, agent_url):
        client = AgentClient(agent_url)
        start = time.perf_counter()
        result = client.post("standby.prepare_image", {
            "image_info": {"id": name, "urls": [f"{url}/{name}"],
                           "os_hash_algo": "sha256", "os_hash_value": checksum},
            "node": {"properties": {"root_device": {"name": dev}}}})
        result = client.get(result["id"], wait=True)
        seconds = time.perf_counter() - start
    if result["command_status"] != "SUCCEEDED":
        raise RuntimeError(json.dumps(result["command_error"]))
    return seconds, float(result["command_result"]["write"]["seconds"])


def make_image(path: str, size: int, content: str) -> None:
    if content == "random":
        with open(path, "wb") as f:
            for _ in range(0, size, 16 * MiB):
                f.write(os.urandom(min(16 * MiB, size - f.tell())))
        return
    from bench.stream import build_image
    cached = os.path.join(CACHE, f"image-{size // MiB}.raw")
    if not os.path.exists(cached):
        os.makedirs(CACHE, exist_ok=True)
        build_image(cached, size, int(size * 0.55))
    shutil.copyfile(cached, path)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def measure(size: int, runs: int, content: str, server: str) -> dict[str, list[float]]:
    """Seconds per run for every row, the rows interleaved round by round."""
    www = os.path.join(WORK, "www")
    os.makedirs(www, exist_ok=True)
    name = "image.raw"
    image = os.path.join(www, name)
    make_image(image, size, content)
    checksum = sha256_file(image)
    seconds: dict[str, list[float]] = {}

    def agent(url: str, dev: str) -> float:
        total, stream = agent_seconds(url, name, dev, checksum)
        seconds.setdefault("agent stream only", []).append(stream)
        return total
    try:
        with http_server(www, server) as url, tmpfs_loop(size + 64 * MiB, WORK) as dev:
            drop_partitions(dev)
            # a first deploy fills the bytecode cache and the page cache of the file
            agent_seconds(url, name, dev, checksum)
            rows: dict[str, Callable[[], float | None]] = {
                "sha256": lambda: sha256_rate(size),
                "HTTP download": lambda: download_seconds(f"{url}/{name}", size),
                "O_DIRECT write": lambda: direct_write_seconds(dev, size),
                "curl -o /dev/null": lambda: curl_seconds(f"{url}/{name}"),
                "agent end to end": lambda: agent(url, dev),
            }
            for _ in range(runs):
                for label, fn in rows.items():
                    value = fn()
                    if value is not None:
                        seconds.setdefault(label, []).append(value)
            drop_partitions(dev)
    finally:
        shutil.rmtree(www, ignore_errors=True)
    return seconds


LIMITS = ("sha256", "HTTP download", "O_DIRECT write")


def table(size: int, seconds: dict[str, list[float]]) -> list[str]:
    rate = {k: size / statistics.median(v) / 1e6 for k, v in seconds.items()}
    agent = rate["agent end to end"]
    slowest = min(LIMITS, key=lambda k: rate[k])
    lines = ["| measurement | MB/s | agent / this |", "|---|---|---|"]
    for label in [*LIMITS, "curl -o /dev/null"]:
        if label in rate:
            note = " (slowest limit)" if label == slowest else ""
            if label not in LIMITS:
                note = " (for scale)"
            lines.append(f"| {label}{note} | {rate[label]:.0f} | {agent / rate[label]:.2f}x |")
    lines.append(f"| agent, its stream alone (StreamReport.seconds) | "
                 f"{rate['agent stream only']:.0f} | - |")
    lines.append(f"| agent end to end (raw, prepare_image to SUCCEEDED) | {agent:.0f} | - |")
    lines.append(f"\nagent end to end / slowest limit ({slowest}): "
                 f"{agent / rate[slowest]:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3, help="rounds; each row's median is shown")
    ap.add_argument("--content", choices=("realistic", "random"), default="realistic",
                    help="bench/stream.py's GPT + ext4 image, or random bytes")
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the target is a loop device")
    size = args.size_mib * MiB
    os.makedirs(WORK, exist_ok=True)
    os.chdir(ROOT)
    seconds = measure(size, args.runs, args.content, args.server)
    print(f"# limits, {args.size_mib} MiB {args.content} image, median of {args.runs} "
          f"round(s), chunk {chunk_size() // MiB} MiB, {os.cpu_count()} CPUs")
    print("\n".join(table(size, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
