#!/usr/bin/env python3
"""Image streaming throughput: deploy-agent against a shell pipeline, same run.

Builds a realistic raw disk image (GPT, an ext4 partition filled with real
files from this machine, zero regions), serves it with nginx on 127.0.0.1,
and writes it to a tmpfs-backed loop device, once with the shell baseline

    curl URL | tee >(openssl dgst -sha256 >sum) | [DECOMP |] dd of=DEV bs=4M oflag=direct

and once through a real agent process (standby.prepare_image).  Prints MB/s,
the ratio to the baseline, CPU seconds and peak RSS.  Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import agent_process, cpu_seconds, nginx, peak_rss_mib, run_shell, tmpfs_loop  # noqa: E402

MiB = 1 << 20
WORK = "/dev/shm/deploy-agent-bench"
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
SOURCES = ["/usr/share", "/usr/bin", "/usr/lib/python3"]
COMPRESSORS = {
    "zstd": (["zstd", "-q", "-T2", "-3", "-c"], "zstd -d -q -c"),
    "gzip": (["pigz", "-p", "2", "-6", "-c"], "gzip -d -c"),
    "xz": (["xz", "-T2", "-1", "-c"], "xz -d -T2 -c"),
}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def build_image(path: str, size: int, fill_bytes: int) -> None:
    """GPT + 64 MiB zeroed ESP + ext4 filled with up to ``fill_bytes`` of real files."""
    stage = path + ".files"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    used = 0
    for src in SOURCES:
        for dirpath, _, files in os.walk(src):
            for name in files:
                full = os.path.join(dirpath, name)
                if used >= fill_bytes or not os.path.isfile(full) or os.path.islink(full):
                    continue
                dest = os.path.join(stage, os.path.relpath(full, "/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                try:
                    shutil.copyfile(full, dest)
                    used += os.path.getsize(full)
                except OSError:
                    continue
    with open(path, "wb") as f:
        f.truncate(size)
    sh("sgdisk", "-n", "1:2048:+64M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300", path)
    part_start = (2048 + 64 * 2048) * 512
    part_size = size - part_start - MiB
    fs = path + ".ext4"
    with open(fs, "wb") as f:
        f.truncate(part_size)
    sh("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", stage, fs)
    sh("dd", f"if={fs}", f"of={path}", "bs=4M", "conv=notrunc,sparse", "oflag=seek_bytes",
       f"seek={part_start}", "status=none")
    os.unlink(fs)
    shutil.rmtree(stage)


def digest(path: str) -> str:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", path], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[0]


def agent_run(url: str, name: str, dev: str, checksum: str, env: dict[str, str]) -> dict:
    from agent.driver.client import AgentClient
    with agent_process(env) as (proc, agent_url):
        client = AgentClient(agent_url)
        cpu0 = cpu_seconds(proc.pid)
        start = time.monotonic()
        result = client.post("standby.prepare_image", {
            "image_info": {"id": name, "urls": [f"{url}/{name}"],
                           "os_hash_algo": "sha256", "os_hash_value": checksum},
            "node": {"properties": {"root_device": {"name": dev}}}})
        result = client.get(result["id"], wait=True)
        seconds = time.monotonic() - start
        if result["command_status"] != "SUCCEEDED":
            raise RuntimeError(json.dumps(result["command_error"]))
        return {"seconds": seconds, "cpu": cpu_seconds(proc.pid) - cpu0,
                "rss": peak_rss_mib(proc.pid), "write": result["command_result"]["write"]}


def agent_run_in_cgroup(url: str, name: str, dev: str, checksum: str, limit: int) -> dict:
    """The agent (and its qemu-img) inside a cgroup v1 memory limit; cgroup peak too."""
    path = f"/sys/fs/cgroup/memory/deploy-agent-bench-{os.getpid()}"
    os.makedirs(path, exist_ok=True)
    with open(f"{path}/memory.limit_in_bytes", "w") as f:
        f.write(str(limit))
    import bench.common as common
    original = common.subprocess.Popen

    def popen_in_cgroup(*args, **kwargs):
        def enter() -> None:
            with open(f"{path}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        kwargs["preexec_fn"] = enter
        return original(*args, **kwargs)
    common.subprocess.Popen = popen_in_cgroup
    try:
        result = agent_run(url, name, dev, checksum, {})
    finally:
        common.subprocess.Popen = original
    with open(f"{path}/memory.max_usage_in_bytes") as f:
        result["cgroup_peak"] = int(f.read()) / MiB
    with open(f"{path}/memory.failcnt") as f:
        result["failcnt"] = int(f.read())
    for _ in range(50):
        try:
            os.rmdir(path)
            break
        except OSError:
            time.sleep(0.1)
    return result


def row(label: str, image_size: int, base: tuple, agent: dict) -> str:
    b_mbs = image_size / base[0] / 1e6
    a_mbs = image_size / agent["seconds"] / 1e6
    return (f"| {label:12} | {b_mbs:8.0f} | {a_mbs:8.0f} | {a_mbs / b_mbs:5.2f}x | "
            f"{base[1]:6.1f} | {agent['cpu']:6.1f} | {base[2]:6.0f} | {agent['rss']:6.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--formats", default="raw,zstd,gzip,xz,sparse")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    size = args.size_mib * MiB
    formats = args.formats.split(",")
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    www = os.path.join(WORK, "www")
    os.makedirs(www, exist_ok=True)
    t0 = time.monotonic()
    raw = os.path.join(www, "image.raw")
    cached = os.path.join(CACHE, f"image-{args.size_mib}.raw")
    if not os.path.exists(cached):
        build_image(cached, size, int(size * 0.55))
    shutil.copyfile(cached, raw)
    sparse = os.path.join(www, "sparse.raw")
    if "sparse" in formats:
        cached_sparse = os.path.join(CACHE, f"sparse-{args.size_mib}.raw")
        if not os.path.exists(cached_sparse):
            build_image(cached_sparse, size, int(size * 0.08))
        shutil.copyfile(cached_sparse, sparse)
    for fmt in formats:
        if fmt in COMPRESSORS:
            target = os.path.join(www, f"image.raw.{fmt}")
            cached_c = os.path.join(CACHE, f"image-{args.size_mib}.raw.{fmt}")
            if not os.path.exists(cached_c):
                with open(cached_c, "wb") as out:
                    subprocess.run([*COMPRESSORS[fmt][0], cached], stdout=out, check=True)
            shutil.copyfile(cached_c, target)
    print(f"# images ready in {time.monotonic() - t0:.1f}s; image {args.size_mib} MiB")
    lines = ["| image        | base MB/s | agent MB/s | ratio | base CPU s | agent CPU s "
             "| base RSS MiB | agent RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    if "qcow2" in formats:
        qcow = os.path.join(www, "image.qcow2")
        cached_q = os.path.join(CACHE, f"image-{args.size_mib}.qcow2")
        if not os.path.exists(cached_q):
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", cached, cached_q)
        shutil.copyfile(cached_q, qcow)
    with nginx(www) as url, tmpfs_loop(2 * size + 64 * MiB, WORK) as dev:
        if "qcow2" in formats:
            qsize = os.path.getsize(qcow)
            limit = 512 * MiB
            base = run_shell(f"qemu-img convert -n -f qcow2 -O raw -t none {qcow} {dev}")
            agent = agent_run_in_cgroup(url, "image.qcow2", dev, digest(qcow), limit)
            conv = agent["write"]["conversion"] or {}
            lines.append(row("qcow2", size, base, agent))
            notes.append(
                f"qcow2: file {qsize // MiB} MiB ({qsize / limit:.1f}x the {limit // MiB} MiB "
                f"cgroup limit); baseline = local qemu-img convert; agent = download + "
                f"stage + convert {agent['seconds']:.1f}s vs {base[0]:.1f}s; qemu-img peak "
                f"RSS {conv.get('peak_rss_bytes', 0) / MiB:.0f} MiB; cgroup peak "
                f"{agent['cgroup_peak']:.0f} MiB, failcnt {agent['failcnt']}")
        for fmt in [f for f in formats if f != "qcow2"]:
            for _ in range(args.runs):
                if fmt in ("raw", "sparse"):
                    name = "image.raw" if fmt == "raw" else "sparse.raw"
                    decomp = ""
                else:
                    name = f"image.raw.{fmt}"
                    decomp = f"| {COMPRESSORS[fmt][1]} "
                served = os.path.join(www, name)
                checksum = digest(served)
                base = run_shell(
                    f"set -o pipefail; curl -s {url}/{name} | tee >(openssl dgst -sha256 "
                    f">{WORK}/sum) {decomp}| dd of={dev} bs=4M iflag=fullblock oflag=direct "
                    "status=none")
                agent = agent_run(url, name, dev, checksum, {})
                lines.append(row(fmt, size, base, agent))
                notes.append(f"{fmt}: {agent['write']['write_path']}, zero path "
                             f"{agent['write']['zero_path']}, zeroed "
                             f"{agent['write']['zeroed_bytes'] // MiB} MiB")
                if fmt == "sparse":
                    full = agent_run(url, name, dev, checksum,
                                     {"DEPLOY_AGENT_IMAGE_ZERO_SKIP": "false"})
                    lines.append(row("sparse-nozs", size, base, full))
                    notes.append(f"sparse image: zero-skip {agent['seconds']:.2f}s vs writing "
                                 f"every byte {full['seconds']:.2f}s = "
                                 f"{agent['seconds'] / full['seconds']:.2f}x")
                if fmt == "raw":
                    buffered = agent_run(url, name, dev, checksum,
                                         {"DEPLOY_AGENT_IMAGE_DIRECT_IO": "false"})
                    lines.append(row("raw-buffered", size, base, buffered))
    print("\n".join(lines))
    print("\n".join(f"- {n}" for n in notes))
    shutil.rmtree(www, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
