"""Inspection at start-up: wait for DHCP, run the collectors, POST the result to Ironic.

Runs before lookup when ``ipa-inspection-callback-url`` is set (Ironic's
``agent`` inspect interface puts it on the kernel command line).  The POST
is retried on connection errors, 5xx and 409 (the node is locked) with
backoff, within ``inspection_callback_timeout``; any other answer is final.
Nothing here raises: a failed inspection is logged, reported in the body's
``error`` key when there is a body to send, and the agent goes on serving.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from agent.config import Config
from agent.inspection import collectors

if TYPE_CHECKING:      # the runtime composes everything; naming its type adds no import
    from agent.runtime import Runtime

LOG = logging.getLogger(__name__)

RETRY_STATUS = {409} | set(range(500, 600))
BACKOFF_CAP_S = 10.0
DHCP_POLL_S = 1.0


class InspectionFailed(Exception):
    """The callback refused the data or stayed unreachable; the message says which."""


# -- DHCP --------------------------------------------------------------------------------

def _nic_by_mac(mac: str, net_dir: str = "/sys/class/net") -> str | None:
    mac = mac.lower().replace("-", ":")
    if len(mac) == 20 and mac.startswith("01:"):     # PXE's BOOTIF=01-aa-bb-...
        mac = mac[3:]
    for name in sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []:
        try:
            with open(os.path.join(net_dir, name, "address"), encoding="ascii") as f:
                if f.read().strip().lower() == mac:
                    return name
        except OSError:
            continue
    return None


def _physical_nics(net_dir: str = "/sys/class/net") -> list[str]:
    names = sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []
    return [n for n in names if os.path.exists(os.path.join(net_dir, n, "device"))]


def _has_address(name: str) -> bool:
    import socket

    import psutil

    for addr in psutil.net_if_addrs().get(name, []):
        if addr.family == socket.AF_INET:
            return True
        if addr.family == socket.AF_INET6 and not addr.address.lower().startswith("fe80"):
            return True
    return False


def wait_for_dhcp(cfg: Config, *, has_address: Callable[[str], bool] = _has_address,
                  nics: Callable[[], list[str]] = _physical_nics,
                  nic_by_mac: Callable[[str], str | None] = _nic_by_mac,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> bool:
    """True once the interfaces to inspect have addresses; False after the timeout."""
    if cfg.inspection_dhcp_all_interfaces:
        wanted = nics()
    elif cfg.bootif:
        nic = nic_by_mac(cfg.bootif)
        wanted = [nic] if nic else []
        if not nic:
            LOG.warning("inspection: no interface has the PXE MAC %s; not waiting for DHCP",
                        cfg.bootif)
    else:
        wanted = []
    if not wanted or cfg.inspection_dhcp_wait_timeout <= 0:
        return True
    deadline = clock() + cfg.inspection_dhcp_wait_timeout
    while True:
        missing = [n for n in wanted if not has_address(n)]
        if not missing:
            LOG.info("inspection: DHCP done on %s", ", ".join(wanted))
            return True
        if clock() >= deadline:
            LOG.warning("inspection: no address on %s after %.0fs; inspecting anyway",
                        ", ".join(missing), cfg.inspection_dhcp_wait_timeout)
            return False
        sleep(DHCP_POLL_S)


# -- the callback -------------------------------------------------------------------------

def post(url: str, data: dict[str, Any], cfg: Config, *,
         session: requests.Session | None = None,
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """POST ``data``; return Ironic's answer, or raise InspectionFailed."""
    http = session or requests.Session()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if cfg.global_request_id:
        headers["X-OpenStack-Request-ID"] = cfg.global_request_id
    deadline = clock() + cfg.inspection_callback_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            # no microversion header: the initial version gets {"uuid": ...} back,
            # and no agent token is issued here for the lookup that follows
            resp = http.post(url, json=data, headers=headers, timeout=cfg.http_request_timeout,
                             verify=False if cfg.insecure else (cfg.cafile or True),
                             cert=(cfg.certfile, cfg.keyfile) if cfg.certfile and cfg.keyfile
                             else cfg.certfile)
            status, why = resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            status, why = None, f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= resp.status_code < 300:
                try:
                    body = resp.json() if resp.content else {}
                except ValueError:
                    body = {}
                LOG.info("inspection data accepted by %s after %d attempt(s)", url, attempt)
                return body if isinstance(body, dict) else {}
        if status is not None and status not in RETRY_STATUS:
            raise InspectionFailed(f"the inspection callback {url} refused the data: {why}")
        delay = min(BACKOFF_CAP_S, 2.0 ** (attempt - 1))
        if clock() + delay > deadline:
            raise InspectionFailed(f"the inspection callback {url} did not accept the data in "
                                   f"{cfg.inspection_callback_timeout:.0f}s ({attempt} "
                                   f"attempt(s)); last: {why}")
        LOG.warning("inspection POST attempt %d failed: %s; retrying in %.0fs", attempt, why,
                    delay)
        sleep(delay)


def node_uuid_from(answer: dict[str, Any]) -> str | None:
    """``{"uuid": ...}`` (initial version) or a lookup-like ``{"node": {"uuid": ...}}``."""
    node = answer.get("node")
    uuid = node.get("uuid") if isinstance(node, dict) else answer.get("uuid")
    return uuid if isinstance(uuid, str) and uuid else None


def collect(runtime: Runtime) -> dict[str, Any]:
    """The body to post: every collector's keys, plus ``error`` if any failed."""
    cfg = runtime.config
    data, failures = collectors.run(runtime.state, cfg.inspection_collectors)
    if "inventory" not in data:
        # Ironic finds the node by the inventory's MACs; without them the error is lost
        from agent.hardware import interfaces

        try:
            data["inventory"] = {"interfaces": interfaces.collect()}
        except Exception as exc:  # noqa: BLE001 - reported in the error key below
            failures.append(f"no inventory: {type(exc).__name__}: {exc}")
    if failures:
        data["error"] = "; ".join(failures)
        LOG.error("inspection: %s", data["error"])
    return data


def run_inspection(runtime: Runtime, *, sleep: Callable[[float], None] = time.sleep
                   ) -> str | None:
    """Inspect and post; return the node UUID Ironic answered with, if any."""
    cfg = runtime.config
    url = cfg.inspection_callback_url
    if not url:
        return None
    started = time.monotonic()
    wait_for_dhcp(cfg, sleep=sleep)
    data = collect(runtime)
    try:
        answer = post(url, data, cfg, sleep=sleep)
    except InspectionFailed as exc:
        LOG.error("inspection failed: %s", exc)
        return None
    uuid = node_uuid_from(answer)
    LOG.info("inspection finished in %.2fs%s", time.monotonic() - started,
             f"; Ironic's node is {uuid}" if uuid else "")
    return uuid
