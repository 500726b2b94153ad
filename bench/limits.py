#!/usr/bin/env python3
"""The agent's deploy rate against the machine's limits, measured in one run.

Limits (each on one core, with the agent's own 2 MiB chunking):

    sha256          hashlib over a large in-memory buffer, 2 MiB per update
    HTTP download   http.client reading a file from nginx (or Python's http.server)
                    on 127.0.0.1 straight into 2 MiB buffers, discarded
    O_DIRECT write  2 MiB sequential O_DIRECT writes to the target (a tmpfs-backed
                    loop device) and a final fsync; the second of two passes
    decompress X    (``--formats``) the agent's library for X (zlib, zstandard,
                    liblzma, bz2) inflating the compressed file from memory

and then the agent end to end: a real agent process (``serve --standalone``)
runs ``standby.prepare_image`` for the same raw image from the same server onto
the same loop device, from the request until SUCCEEDED is reported (the
writer's fsync included), as bench/stream.py does.  The agent's rate is shown
as a ratio to every limit and to the slowest of them.  ``curl -o /dev/null``
is shown for scale (it is not a limit of the Python path).

Rates are image bytes per second.  With a realistic image (``--content
realistic``, bench/stream.py's GPT + ext4 image), zero runs are punched rather
than written, so the agent can beat the O_DIRECT row; sha256 and the download
see every byte and bound the agent whatever the content.  A compressed image's
limits are its decompressor's, and sha256 and the download over the smaller
file (the raw rows' per-byte rates); the slowest of them, usually the
decompressor, is the one the agent is compared with.  ``--compare DIR`` runs
the agent from another copy of the code too, alternating in every round, so
before and after are measured against the same limits.

Run as root: python bench/limits.py [--size-mib N] [--runs N] [--content random]
[--formats raw,gzip,zstd,xz,bzip2] [--compare DIR]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.imaging.decompress import library_decompressor  # noqa: E402
from bench.common import ROOT, tmpfs_loop  # noqa: E402
from bench.harness import drop_partitions, http_server  # noqa: E402
from bench.stream_profile import COMPRESS, image_for  # noqa: E402
from bench.trees import agent_in, tree  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench-limits"
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
    """Seconds for http.client to read ``url`` straight into 2 MiB buffers, discarded.

    Plain http.client, no agent code: what one Python thread can receive over
    loopback, so the limit is the same whichever agent tree is measured.
    """
    from agent.imaging import plumbing
    parts = urllib.parse.urlsplit(url)
    buf = plumbing.Buffer(chunk_size())
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        received = 0
        while True:
            n = plumbing.fill(resp.readinto, buf)
            received += n
            if n < len(buf.view):
                break
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"downloaded {received} bytes, expected {size}")
    return seconds


def decompress_seconds(kind: str, path: str, size: int) -> float:
    """Seconds for the agent's decompression library to inflate ``path`` on one core.

    The compressed file is in memory and the output goes into a 1 MiB buffer
    that is thrown away, so only the decompressor is measured.  xz uses
    liblzma here; the agent runs the ``xz`` tool, which may use more cores.
    """
    with open(path, "rb") as f:
        data = f.read()
    out = bytearray(MiB)
    view = memoryview(out)
    produced = 0
    start = time.perf_counter()
    if kind == "zstd":
        import zstandard
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
            data, read_across_frames=True)
        while n := reader.readinto(view):
            produced += n
    else:
        # fed 1 MiB at a time as a stream arrives: zlib copies its unconsumed
        # input on every call, so a whole file at once would measure that copy
        obj = library_decompressor(kind)
        whole = memoryview(data)
        offset = 0
        pending: bytes | memoryview = b""
        while True:
            if not len(pending) and getattr(obj, "needs_input", True):
                pending = whole[offset:offset + MiB]
                offset += len(pending)
            chunk = obj.decompress(pending, MiB)
            view[:len(chunk)] = chunk
            produced += len(chunk)
            pending = obj.unconsumed_tail if kind == "gzip" else b""
            if obj.eof:
                rest = bytes(obj.unused_data) + bytes(whole[offset:offset + MiB])
                offset += MiB
                if not rest:
                    break
                obj = library_decompressor(kind)    # another member or stream follows
                pending = rest
            elif not chunk and not len(pending) and offset >= len(whole):
                raise RuntimeError(f"{path} ends before its {kind} stream does")
    seconds = time.perf_counter() - start
    if produced != size:
        raise RuntimeError(f"{path} inflated to {produced} bytes, expected {size}")
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


def agent_seconds(url: str, name: str, dev: str, checksum: str,
                  root: str = ROOT) -> tuple[float, float]:
    """standby.prepare_image through a real agent process run from source tree ``root``:
    (request to SUCCEEDED, the agent's own figure for the stream alone)."""
    from agent.driver.client import AgentClient
    with agent_in(root, os.path.join(WORK, "pycache")) as (_proc, agent_url):
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
    shutil.copyfile(image_for("raw", size // MiB, content), path)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


AGENT = "agent end to end"
COMPARED = "compared agent end to end"


def measure(size: int, runs: int, content: str, server: str, formats: list[str],
            compare: str | None = None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per run for every row, the rows interleaved round by round, and the
    size of every format's file."""
    # per process: another run of this bench must not delete this one's files
    run = os.path.join(WORK, f"run-{os.getpid()}")
    www = os.path.join(run, "www")
    os.makedirs(www, exist_ok=True)
    files = {"raw": "image.raw"}
    raw = os.path.join(www, files["raw"])
    make_image(raw, size, content)
    for kind in formats:
        if kind != "raw":
            cached = image_for(kind, size // MiB, content)
            files[kind] = os.path.basename(cached)
            shutil.copyfile(cached, os.path.join(www, files[kind]))
    checksums = {kind: sha256_file(os.path.join(www, name)) for kind, name in files.items()}
    sizes = {kind: os.path.getsize(os.path.join(www, name)) for kind, name in files.items()}
    trees = tree(compare)
    seconds: dict[str, list[float]] = {}

    def agent(url: str, dev: str, kind: str, label: str, root: str) -> float:
        total, stream = agent_seconds(url, files[kind], dev, checksums[kind], root)
        suffix = "" if kind == "raw" else f" {kind}"
        seconds.setdefault(f"{label}agent stream only{suffix}", []).append(stream)
        return total
    try:
        with http_server(www, server) as url, tmpfs_loop(size + 64 * MiB, run) as dev:
            drop_partitions(dev)
            # a first deploy per tree fills the bytecode cache and the page cache of the file
            for _, root in trees:
                agent_seconds(url, files["raw"], dev, checksums["raw"], root)
            rows: dict[str, Callable[[], float | None]] = {
                "sha256": lambda: sha256_rate(size),
                "HTTP download": lambda: download_seconds(f"{url}/{files['raw']}", size),
                "O_DIRECT write": lambda: direct_write_seconds(dev, size),
                "curl -o /dev/null": lambda: curl_seconds(f"{url}/{files['raw']}"),
            }
            for kind in formats:
                suffix = "" if kind == "raw" else f" {kind}"
                if kind != "raw":
                    rows[f"decompress {kind}"] = functools.partial(
                        decompress_seconds, kind, os.path.join(www, files[kind]), size)
                # alternate the trees within a round; the order flips every round
                for label, root in trees:
                    rows[f"{label}{AGENT}{suffix}"] = functools.partial(
                        agent, url, dev, kind, label, root)
            for i in range(runs):
                items = list(rows.items())
                if i % 2:
                    items.reverse()
                for label, fn in items:
                    value = fn()
                    if value is not None:
                        seconds.setdefault(label, []).append(value)
            drop_partitions(dev)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return seconds, sizes


LIMITS = ("sha256", "HTTP download", "O_DIRECT write")


def table(size: int, seconds: dict[str, list[float]]) -> list[str]:
    """The raw image: every limit, the agent's ratio to each, and to the slowest."""
    rate = {k: size / statistics.median(v) / 1e6 for k, v in seconds.items()}
    agent = rate[AGENT]
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
    if COMPARED in rate:
        lines.append(f"| compared tree's agent end to end (raw) | {rate[COMPARED]:.0f} | "
                     f"{rate[COMPARED] / rate[slowest]:.2f}x of the slowest limit |")
    lines.append(f"\nagent end to end / slowest limit ({slowest}): "
                 f"{agent / rate[slowest]:.2f}x")
    return lines


def compressed_table(size: int, seconds: dict[str, list[float]],
                     sizes: dict[str, int]) -> list[str]:
    """Compressed images: the limits in image bytes per second and the agent's ratio.

    The file's sha256 and download limits are the raw image's per-byte rates
    applied to the (smaller) file; the decompressor's is measured.
    """
    def mbs(label: str) -> float:
        return size / statistics.median(seconds[label]) / 1e6
    kinds = [k for k in sizes if k != "raw" and f"{AGENT} {k}" in seconds]
    if not kinds:
        return []
    compare = any(f"{COMPARED} {k}" in seconds for k in kinds)
    lines = ["| format | file MiB | decompress, one core | sha256 of the file | download of "
             "the file | O_DIRECT write | agent end to end | agent / slowest |"
             + (" compared tree / slowest |" if compare else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if compare else "")]
    for kind in kinds:
        scale = size / sizes[kind]
        limits = {"decompress": mbs(f"decompress {kind}"), "sha256": mbs("sha256") * scale,
                  "download": mbs("HTTP download") * scale, "write": mbs("O_DIRECT write")}
        slowest = min(limits, key=lambda k: limits[k])
        cells = [f"{v:.0f}" + (" (slowest)" if k == slowest else "") for k, v in limits.items()]
        agent = mbs(f"{AGENT} {kind}")
        line = (f"| {kind} | {sizes[kind] / MiB:.0f} | {' | '.join(cells)} | {agent:.0f} | "
                f"{agent / limits[slowest]:.2f}x |")
        if compare:
            line += f" {mbs(f'{COMPARED} {kind}') / limits[slowest]:.2f}x |"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3, help="rounds; each row's median is shown")
    ap.add_argument("--content", choices=("realistic", "random"), default="realistic",
                    help="bench/stream.py's GPT + ext4 image, or random bytes")
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--formats", default="raw",
                    help="comma-separated: raw and any of gzip, zstd, xz, bzip2 (the image "
                         "compressed; each adds its decompressor's one-core limit)")
    ap.add_argument("--compare", metavar="DIR",
                    help="also run the agent from source tree DIR (a copy of the code before "
                         "a change), alternating with this tree in every round")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the target is a loop device")
    formats = ["raw"] + [f for f in args.formats.split(",") if f and f != "raw"]
    unknown = [f for f in formats if f != "raw" and f not in COMPRESS]
    if unknown:
        sys.exit(f"unknown format(s): {', '.join(unknown)}")
    size = args.size_mib * MiB
    os.makedirs(WORK, exist_ok=True)
    os.chdir(ROOT)
    seconds, sizes = measure(size, args.runs, args.content, args.server, formats, args.compare)
    print(f"# limits, {args.size_mib} MiB {args.content} image, median of {args.runs} "
          f"round(s), chunk {chunk_size() // MiB} MiB, {os.cpu_count()} CPUs"
          + (f"; compared with {args.compare}" if args.compare else ""))
    print("\n".join(table(size, seconds)))
    extra = compressed_table(size, seconds, sizes)
    if extra:
        print("\ncompressed images (MB/s of image bytes):")
        print("\n".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
