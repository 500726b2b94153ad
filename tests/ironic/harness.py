"""The parts of the real-Ironic tier that are not Ironic: the agent process, images, disks.

The agent is the real ``deploy-agent serve``, started with a ``--cmdline``
file as a ramdisk would be, pointed at Ironic's API; Ironic then decides
everything, including that the agent serves HTTPS (auto-TLS).  Images are
real files served by a real HTTP server (HEAD included: Ironic checks the
URL before it tells the agent).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20
LOOPBACK = "127.0.0.1"


def host_mac() -> str:
    """The MAC the agent looks up with: the first NIC with a ``device`` link (no dummies here)."""
    for name in sorted(os.listdir("/sys/class/net")):
        if os.path.exists(f"/sys/class/net/{name}/device"):
            with open(f"/sys/class/net/{name}/address", encoding="ascii") as f:
                return f.read().strip()
    raise RuntimeError("no network interface with a device link: the agent cannot look up")


class Agent:
    """One boot of the ramdisk: a ``deploy-agent serve`` process until stop()."""

    def __init__(self, work_dir: str, api_url: str, params: dict[str, str] | None = None,
                 name: str = "agent") -> None:
        self.work_dir = work_dir
        self.api_url = api_url
        self.params = params or {}
        self.name = name
        self.boots = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ""

    def start(self) -> Agent:
        self.boots += 1
        stem = f"{self.name}-{self.boots}"
        cmdline = {"ipa-advertise-host": LOOPBACK, "ipa-lookup-interval": "0.5",
                   "ipa-debug": "1", **self.params}
        if self.api_url:       # a managed inspection boot has no ipa-api-url
            cmdline["ipa-api-url"] = self.api_url
        cmdline_path = os.path.join(self.work_dir, f"{stem}.cmdline")
        with open(cmdline_path, "w", encoding="utf-8") as f:
            f.write("BOOT_IMAGE=/vmlinuz " + " ".join(f"{k}={v}" for k, v in cmdline.items())
                    + "\n")
        self.log_path = os.path.join(self.work_dir, f"{stem}.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
        env["PYTHONPATH"] = REPO
        with open(self.log_path, "wb") as log:
            # port 0 is not an option: the agent must advertise the port it serves;
            # --ramdisk false keeps power actions away from this host
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "serve", "--cmdline", cmdline_path,
                 "--listen", LOOPBACK, "--port", str(free_port()), "--ramdisk", "false",
                 "--include-loop-devices"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        return self

    def restart(self) -> Agent:
        """What a reboot into the ramdisk does: a new process, new token, new certificate."""
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass


class FileServer:
    """Serves a directory on 127.0.0.1 (GET and HEAD), as an image store would."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        handler = functools.partial(_QuietHandler, directory=directory)
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}"

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, name: str, data: bytes) -> tuple[str, str]:
        """Publish ``data``; return its URL and sha256."""
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)
        return f"{self.url}/{name}", hashlib.sha256(data).hexdigest()


# -- images and disks --------------------------------------------------------------

def gpt_image(path: str, size: int = 8 * MiB, seed: bytes = b"deploy-agent") -> bytes:
    """A raw GPT disk image with one partition full of recognisable bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-c", "1:payload", path], check=True,
                   capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(pattern(seed, 2 * MiB))
    with open(path, "rb") as f:
        return f.read()


def pattern(seed: bytes, size: int) -> bytes:
    """``size`` bytes that no other test writes, cheap to recompute."""
    block = hashlib.sha512(seed).digest()
    out = io.BytesIO()
    counter = 0
    while out.tell() < size:
        out.write(hashlib.sha512(block + counter.to_bytes(8, "little")).digest() * 64)
        counter += 1
    return out.getvalue()[:size]


def ext4_image(path: str, size: int = 24 * MiB, marker: str = "deploy-agent") -> bytes:
    """A partition image: an ext4 filesystem holding ``/etc/marker``."""
    root = path + ".root"
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc", "marker"), "w", encoding="utf-8") as f:
        f.write(marker + "\n")
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "img-root", "-d", root, path], check=True,
                   capture_output=True)
    with open(path, "rb") as f:
        return f.read()


def qcow2_of(raw_path: str, out_path: str) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_path, out_path],
                   check=True, capture_output=True)
    with open(out_path, "rb") as f:
        return f.read()


def read_disk(disk: str, offset: int, size: int) -> bytes:
    with open(disk, "rb") as f:
        f.seek(offset)
        return f.read(size)


def partitions(disk: str) -> list[dict[str, Any]]:
    """The disk's partition table as sfdisk reads it ([] when there is none)."""
    out = subprocess.run(["sfdisk", "--json", disk], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    table = json.loads(out.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [dict(p, offset=int(p["start"]) * sector, bytes=int(p["size"]) * sector)
            for p in table.get("partitions", [])]


def config_drive_meta(disk: str) -> dict[str, Any]:
    """meta_data.json from the disk's config drive partition (an ISO 9660 file system)."""
    import pycdlib

    for part in partitions(disk):
        head = read_disk(disk, part["offset"] + 0x8001, 5)
        if head != b"CD001":
            continue
        with open(disk, "rb") as f:
            f.seek(part["offset"])
            iso_bytes = io.BytesIO(f.read(part["bytes"]))
        iso = pycdlib.PyCdlib()
        iso.open_fp(iso_bytes)
        out = io.BytesIO()
        facade = iso.get_rock_ridge_facade() if iso.has_rock_ridge() else None
        if facade is not None:
            facade.get_file_from_iso_fp(out, rr_path="/openstack/latest/meta_data.json")
        else:
            iso.get_file_from_iso_fp(out, joliet_path="/openstack/latest/meta_data.json")
        iso.close()
        return dict(json.loads(out.getvalue()))
    raise AssertionError(f"no ISO 9660 config drive partition on {disk}: {partitions(disk)}")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def tar_members(path: str) -> dict[str, bytes]:
    """Every regular file in a (gzipped) tarball, by name."""
    import tarfile

    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                found[member.name] = extracted.read()
    return found


# -- what Ironic forgets when a flow ends ----------------------------------------------

class StepWatch:
    """An ``on_poll`` for ``Ironic.wait_for`` that keeps what Ironic wipes when a flow ends.

    Ironic stores no step results, and when cleaning, a deploy or servicing ends it
    drops the agent's token, URL and certificate and its cached step lists from the
    node.  The API masks the token, so it is read from Ironic's own database while
    the flow runs; with it, ``commands()`` asks the agent for its command results.
    """

    def __init__(self, database_url: str, node_uuid: str) -> None:
        self.db_path = database_url.removeprefix("sqlite:///")
        self.node_uuid = node_uuid
        self.seen: dict[str, Any] = {}       # last non-empty agent_cached_* / *_steps
        self.token = ""
        self.agent_url = ""
        self.ca_pem = ""

    def __call__(self, node: dict[str, Any]) -> None:
        for key, value in (node.get("driver_internal_info") or {}).items():
            if value and (key.startswith("agent_cached_") or key.endswith("_steps")):
                self.seen[key] = value
        if self.token:
            return
        import sqlite3

        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT driver_internal_info FROM nodes WHERE uuid = ?",
                             (self.node_uuid,)).fetchone()
        info = json.loads(row[0]) if row and row[0] else {}
        if info.get("agent_secret_token") and info.get("agent_url"):
            ca = info.get("agent_verify_ca")
            if isinstance(ca, str) and os.path.isfile(ca):
                with open(ca, encoding="ascii") as f:
                    self.ca_pem = f.read()
            self.token, self.agent_url = info["agent_secret_token"], info["agent_url"]

    def commands(self, work_dir: str) -> list[dict[str, Any]]:
        """The agent's command results (``GET /v1/commands``), oldest first."""
        import requests

        if not self.token:
            raise AssertionError("the agent's token was never seen in Ironic's database")
        verify: bool | str = True
        if self.ca_pem:
            verify = os.path.join(work_dir, "agent-ca.pem")
            with open(verify, "w", encoding="ascii") as f:
                f.write(self.ca_pem)
        r = requests.get(f"{self.agent_url}/v1/commands/", params={"agent_token": self.token},
                         verify=verify, timeout=30)
        r.raise_for_status()
        return list(r.json()["commands"])

    def step_results(self, work_dir: str, step_type: str) -> dict[str, Any]:
        """Step name -> the agent's result of its last ``execute_<type>_step``."""
        found = {}
        for command in self.commands(work_dir):
            result = command.get("command_result") or {}
            step = result.get(f"{step_type}_step") or {}
            if command.get("command_name") == f"execute_{step_type}_step" and step:
                found[step["step"]] = dict(result.get(f"{step_type}_result") or {},
                                           command_status=command.get("command_status"))
        return found
