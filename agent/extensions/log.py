"""log.collect_system_logs: a capped tar.gz of what an operator needs to debug a node."""

from __future__ import annotations

import base64
import concurrent.futures
import glob
import io
import os
import tarfile
import time
from typing import Any

from agent import agentlog, tools
from agent.commands import CommandContext, command
from agent.errors import AgentError
from agent.extensions import Extension

# (member name, tool, args); each runs with a short timeout so the whole
# command stays far inside the conductor's 60 s request timeout
COMMANDS = [
    ("journal", "journalctl", ["-b", "--no-pager", "-o", "short-precise"]),
    ("dmesg", "dmesg", ["-T"]),
    ("lsblk", "lsblk", ["-a", "-o", "NAME,KNAME,SIZE,TYPE,FSTYPE,LABEL,PARTLABEL,UUID,"
                                    "MOUNTPOINT,MODEL,SERIAL,WWN,TRAN,PHY-SEC,LOG-SEC"]),
    ("ip-addr", "ip", ["addr"]),
    ("ip-route", "ip", ["route"]),
    ("df", "df", ["-a"]),
    ("ps", "ps", ["aux"]),
    ("efibootmgr", "efibootmgr", ["-v"]),
]
FILES = ["/proc/mounts", "/proc/mdstat", "/proc/cmdline", "/proc/meminfo"]
TOOL_TIMEOUT = 15.0


def _run(tool: str, args: list[str]) -> str:
    try:
        proc = tools.run(tool, *args, timeout=TOOL_TIMEOUT, check=False)
        return proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr.strip() else "")
    except AgentError as exc:
        return f"[not collected: {exc.details}]\n"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        return f"[not collected: {exc}]\n"


def gather(log_dirs: tuple[str, ...] = ("/var/log",)) -> dict[str, str]:
    """Collect every item in parallel; failures become text, never exceptions."""
    items: dict[str, str] = {"deploy-agent.log": agentlog.RING.text()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, tool, args) for name, tool, args in COMMANDS}
        for name, fut in futures.items():
            items[name] = fut.result()
    for path in FILES:
        items[path.strip("/").replace("/", "-")] = _read(path)
    if "[not collected" in items["journal"]:
        for d in log_dirs:
            for path in sorted(glob.glob(os.path.join(d, "*.log")))[:20]:
                items["var-log/" + os.path.basename(path)] = _read(path)
    return items


def pack(items: dict[str, str], cap: int) -> bytes:
    """tar.gz the items; each keeps its *tail* within a fair share of ``cap``."""
    share = max(4096, cap // max(1, len(items)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for name, text in items.items():
            data = text.encode("utf-8", "replace")
            if len(data) > share:
                data = b"[truncated to the last %d bytes]\n" % share + data[-share:]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class LogExtension(Extension):
    name = "log"

    @command()
    def collect_system_logs(self, ctx: CommandContext) -> dict[str, Any]:
        blob = pack(gather(), self.config.log_cap_bytes)
        return {"system_logs": base64.b64encode(blob).decode()}
