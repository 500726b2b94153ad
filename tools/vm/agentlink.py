"""Reaching the agent inside the VM from the host, with its TLS certificate still checked.

The agent heartbeats ``callback_url=https://10.0.2.15:9999`` (its address on
QEMU's user network) and a certificate whose only SAN is 10.0.2.15.  The host
cannot route to 10.0.2.15; it reaches the same socket through the hostfwd
port on 127.0.0.1.  Rather than turn verification off, the client connects
to 127.0.0.1:<port> and verifies exactly what the conductor would: the chain
against the ``agent_verify_ca`` PEM pinned at the first heartbeat, and the
certificate's name against the *advertised* host.  A wrong or swapped
certificate still fails, which plain HTTP or ``verify=False`` would hide.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import time
import urllib.parse
from typing import Any

from requests.adapters import HTTPAdapter

from agent.driver import conductor
from agent.driver.client import AgentClient

AGENT_LOG_MEMBER = "deploy-agent.log"


class AdvertisedNameAdapter(HTTPAdapter):
    """Checks the server certificate against ``hostname`` instead of the URL's host."""

    def __init__(self, hostname: str, **kwargs: Any) -> None:
        self.hostname = hostname
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_hostname"] = self.hostname
        super().init_poolmanager(*args, **kwargs)


def local_client(callback_url: str, token: str | None, verify: bool | str,
                 local_port: int) -> AgentClient:
    """An AgentClient for ``callback_url`` that connects through 127.0.0.1:``local_port``."""
    parsed = urllib.parse.urlsplit(callback_url)
    local = f"{parsed.scheme}://127.0.0.1:{local_port}"
    client = conductor.agent_client(local, token, verify)
    if parsed.scheme == "https" and parsed.hostname:
        client.session.mount(local + "/", AdvertisedNameAdapter(parsed.hostname))
    return client


def direct_client(local_port: int) -> AgentClient:
    """Before any heartbeat: just "is the API up", no token, no certificate check."""
    client = conductor.agent_client(f"https://127.0.0.1:{local_port}", None, False)
    client.timeout = 10.0
    return client


def fetch_logs(client: AgentClient, dest_dir: str, label: str) -> tuple[str | None, str]:
    """Run log.collect_system_logs; save the tarball; return (path, agent log text)."""
    try:
        result = client.post("log.collect_system_logs", {}, wait=True)
        blob = base64.b64decode((result.get("command_result") or {})["system_logs"])
    except Exception as exc:  # noqa: BLE001 - best effort, on a failure path
        return None, f"[the agent's logs could not be collected: {exc}]"
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, f"agent-logs-{label}-{time.strftime('%H%M%S')}.tar.gz")
    with open(path, "wb") as f:
        f.write(blob)
    return path, agent_log_text(blob)


def agent_log_text(blob: bytes) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            member = tar.extractfile(AGENT_LOG_MEMBER)
            return member.read().decode("utf-8", "replace") if member else ""
    except (tarfile.TarError, KeyError) as exc:
        return f"[no {AGENT_LOG_MEMBER} in the collected logs: {exc}]"
