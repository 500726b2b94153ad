#!/usr/bin/env python3
"""Where the byte path spends its time: per-stage busy and wait, in one process.

Streams one image (raw or compressed) from a local HTTP server through the
agent's own ``open_image`` → ``stream_body`` into a ``DeviceWriter`` on a
tmpfs-backed loop device, as ``deploy.stream_image`` does, and prints for
every pipeline thread its wall time, its CPU time (``time.thread_time``) and
the time it spent waiting on a hand-off (a pipe's get/put, a pool's get).
A thread's wall time splits into its CPU time, its waits on hand-offs, its
waits for a CPU (run queue, from schedstat) and the rest: blocking system
calls (a write the device has not finished) and waits for the GIL.  A stage
whose hand-off wait is near zero is the one that bounds the rest.
Also printed: the rate, and this process's peak RSS growth over the stream
(VmHWM after resetting it through /proc/self/clear_refs).

Run as root: python bench/stream_profile.py [--format raw|gzip|zstd|xz|bzip2]
[--size-mib N] [--runs N]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import tmpfs_loop  # noqa: E402
from bench.harness import drop_partitions, http_server  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench-profile"
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
COMPRESS = {
    "gzip": ["pigz", "-p", "2", "-6", "-c"],
    "zstd": ["zstd", "-q", "-T2", "-3", "-c"],
    "xz": ["xz", "-T2", "-1", "-c"],
    "bzip2": ["bzip2", "-1", "-c"],
}
SUFFIX = {"gzip": "gz", "zstd": "zst", "xz": "xz", "bzip2": "bz2"}


def image_for(fmt: str, size_mib: int, content: str) -> str:
    """A cached raw image (bench/stream.py's realistic one, or random) and its compressions."""
    os.makedirs(CACHE, exist_ok=True)
    raw = os.path.join(CACHE, f"image-{size_mib}.raw" if content == "realistic"
                       else f"random-{size_mib}.raw")
    if not os.path.exists(raw):
        if content == "random":
            with open(raw + ".tmp", "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MiB))
        else:
            from bench.stream import build_image
            build_image(raw + ".tmp", size_mib * MiB, int(size_mib * MiB * 0.55))
        os.rename(raw + ".tmp", raw)
    if fmt == "raw":
        return raw
    out = f"{raw}.{SUFFIX[fmt]}"
    if not os.path.exists(out):
        with open(out + ".tmp", "wb") as f:
            subprocess.run([*COMPRESS[fmt], raw], stdout=f, check=True)
        os.rename(out + ".tmp", out)
    return out


class Meter:
    """Per-thread wait time on hand-offs and CPU time, patched into plumbing."""

    def __init__(self) -> None:
        self.wait: dict[str, float] = collections.defaultdict(float)
        self.detail: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.queued: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def _timed(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)
        meter = self
        where = f"{owner.__name__}.{name}"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                meter.wait[threading.current_thread().name] += spent
                meter.detail[(threading.current_thread().name, where)] += spent
        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        from agent.imaging import plumbing
        for owner, name in ((plumbing.Pipe, "get"), (plumbing.Pipe, "put"),
                            (plumbing.Pool, "get")):
            self._timed(owner, name)
        original_start = plumbing.Stages.start
        meter = self

        def start(stages: Any, name: str, fn: Callable[[], None]) -> None:
            def measured() -> None:
                wall0, cpu0, queued0 = time.perf_counter(), time.thread_time(), run_delay()
                try:
                    fn()
                finally:
                    label = threading.current_thread().name
                    meter.cpu[label] = time.thread_time() - cpu0
                    meter.wall[label] = time.perf_counter() - wall0
                    meter.queued[label] = run_delay() - queued0
            original_start(stages, name, measured)
        plumbing.Stages.start = start  # type: ignore[assignment,method-assign]
        self._undo.append(lambda: setattr(plumbing.Stages, "start", original_start))

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()


def run_delay() -> float:
    """Seconds this thread has waited on a run queue for a CPU (schedstat)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


def machine_busy() -> float:
    """Seconds all CPUs together have spent outside idle and iowait since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stream_once(url: str, dev: str, digest: str, meter: Meter) -> dict[str, Any]:
    from agent.imaging import head
    from agent.imaging.checksum import Expected
    from agent.imaging.source import HTTPSource
    from agent.imaging.stream import stream_body
    from agent.imaging.writer import DeviceWriter
    drop_partitions(dev)
    reset_peak_rss()
    before = rss_mib("VmRSS")
    busy0, cpu0 = machine_busy(), time.process_time()
    start = time.perf_counter()
    source = HTTPSource([url], retries=0)
    opened = head.open_image(source)
    with DeviceWriter(dev) as writer:
        writer.begin()
        meter.install()
        try:
            report = stream_body(opened, writer, Expected("sha256", digest, "bench"))
        finally:
            meter.uninstall()
        writer.write_head()
    source.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "machine_cpu": machine_busy() - busy0,
            "process_cpu": time.process_time() - cpu0, "image_bytes": report.image_bytes,
            "received": report.received_bytes, "zeroed": report.zeroed_bytes,
            "peak_growth": rss_mib("VmHWM") - before, "requests": source.requests}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="raw", choices=("raw", *COMPRESS))
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--content", choices=("realistic", "random"), default="realistic")
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT",
                    help="override an integer constant for a tuning experiment, e.g. "
                         "stream.OUT_BUFFERS=4 (module under agent.imaging)")
    args = ap.parse_args(argv)
    for item in args.set:
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        mod = importlib.import_module(f"agent.imaging.{module}")
        if not isinstance(getattr(mod, name), int):
            sys.exit(f"{target} is not an integer constant")
        setattr(mod, name, int(value))
    if os.geteuid() != 0:
        sys.exit("run as root: the target is a loop device")
    image = image_for(args.format, args.size_mib, args.content)
    www = os.path.join(WORK, f"www-{os.getpid()}")
    os.makedirs(www, exist_ok=True)
    name = os.path.basename(image)
    shutil.copyfile(image, os.path.join(www, name))
    with open(image, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    runs: list[dict[str, Any]] = []
    per_stage: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    try:
        with http_server(www, args.server) as url, \
                tmpfs_loop(args.size_mib * MiB + 64 * MiB, www) as dev:
            stream_once(f"{url}/{name}", dev, digest, Meter())     # warm caches
            for _ in range(args.runs):
                meter = Meter()
                runs.append(stream_once(f"{url}/{name}", dev, digest, meter))
                for label in meter.wall:
                    per_stage[label]["wall"].append(meter.wall[label])
                    per_stage[label]["cpu"].append(meter.cpu[label])
                    per_stage[label]["queued"].append(meter.queued[label])
                    per_stage[label]["wait"].append(meter.wait.get(label, 0.0))
                for (label, where), spent in meter.detail.items():
                    per_stage[label][where].append(spent)
            drop_partitions(dev)
    finally:
        shutil.rmtree(www, ignore_errors=True)
    size = runs[0]["image_bytes"]
    seconds = statistics.median(r["seconds"] for r in runs)
    print(f"# {args.format}, {args.size_mib} MiB {args.content} image, "
          f"{runs[0]['received'] // MiB} MiB received, median of {args.runs}")
    print(f"rate {size / seconds / 1e6:.0f} MB/s of image ({seconds:.2f}s); peak RSS growth "
          f"{statistics.median(r['peak_growth'] for r in runs):.1f} MiB; "
          f"zeroed {runs[0]['zeroed'] // MiB} MiB; requests {runs[0]['requests']}")
    print(f"CPU seconds: this process {statistics.median(r['process_cpu'] for r in runs):.2f}, "
          f"the whole machine {statistics.median(r['machine_cpu'] for r in runs):.2f} "
          f"({os.cpu_count()} CPUs x {seconds:.2f}s = {(os.cpu_count() or 1) * seconds:.2f} "
          "available; the rest of the machine's jobs included)")
    print("| stage | wall s | cpu s | hand-off wait s | run-queue wait s | rest s | waits on |")
    print("|---|---|---|---|---|---|---|")
    for label, figures in per_stage.items():
        if "wall" not in figures:
            continue        # not a pipeline stage (xz's feeder thread)
        med = {k: statistics.median(v) for k, v in figures.items()}
        waits = ", ".join(f"{k} {v:.2f}" for k, v in med.items() if "." in k)
        rest = med["wall"] - med["cpu"] - med["wait"] - med["queued"]
        print(f"| {label.removeprefix('pipeline-')} | {med['wall']:.2f} | {med['cpu']:.2f} | "
              f"{med['wait']:.2f} | {med['queued']:.2f} | {rest:.2f} | {waits} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
