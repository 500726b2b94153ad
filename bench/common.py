"""Shared helpers for benchmarks: free ports, nginx on 127.0.0.1, agents, tmpfs loops."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nginx(root: str) -> Iterator[str]:
    """nginx with sendfile serving ``root``, so the server costs little CPU."""
    if not shutil.which("nginx"):
        sys.exit("nginx is needed for this benchmark: apt-get install nginx-light")
    port = free_port()
    conf_dir = tempfile.mkdtemp(prefix="bench-nginx-")
    conf = os.path.join(conf_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {conf_dir}/pid;
error_log {conf_dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {conf_dir}; proxy_temp_path {conf_dir};
  fastcgi_temp_path {conf_dir}; uwsgi_temp_path {conf_dir}; scgi_temp_path {conf_dir};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", conf], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/")
        yield url
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(conf_dir, ignore_errors=True)


def wait_http(url: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while True:
        try:
            requests.get(url, timeout=1)
            return time.monotonic() - start
        except requests.RequestException:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def tmpfs_loop(size: int, workdir: str) -> Iterator[str]:
    backing = os.path.join(workdir, "loop-backing")
    with open(backing, "wb") as f:
        f.truncate(size)
    dev = subprocess.run(["losetup", "-f", "--show", backing], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev])
        os.unlink(backing)


@contextlib.contextmanager
def agent_process(env: dict[str, str] | None = None, root: str = ROOT
                  ) -> Iterator[tuple[subprocess.Popen, str]]:
    """``serve --standalone`` from source tree ``root``; yields the process and its URL."""
    port = free_port()
    full_env = dict(os.environ, **(env or {}))
    # -m puts the working directory first on sys.path: the tree under test runs
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--standalone",
                             "--include-loop-devices", "--listen", "127.0.0.1",
                             "--port", str(port)], cwd=root, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/status")
        yield proc, url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaped either way."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status_mib(pid: int, field: str) -> float:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB; NaN when absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run_shell(cmd: str) -> tuple[float, float, float]:
    """Run a bash pipeline; return (seconds, CPU seconds, peak RSS MiB of any process)."""
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", cmd])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"baseline failed ({proc.returncode}): {cmd}")
    return (time.monotonic() - start, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024)
