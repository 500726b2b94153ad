"""Running under a controller: lookup, token, advertise address, auto-TLS, heartbeats.

``run_with_controller(runtime)`` is the whole startup under Ironic, in the
order the reference's lifecycle gives (§1): find the NICs' MACs, look the
node up, apply the controller's settings, settle the token (or lock down),
find the address to advertise, start the API (HTTPS with a per-boot
certificate when the API is new enough), then heartbeat.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.config import Config, is_ramdisk
from agent.errors import AdvertiseAddressNotFound, ConfigError
from agent.ironic.heartbeat import Heartbeater
from agent.ironic.http import AUTO_TLS_VERSION, ControllerClient, format_version
from agent.ironic.lookup import apply_overrides, lookup, resolve_token

if TYPE_CHECKING:      # the runtime composes everything; naming its type adds no import
    from agent.runtime import Runtime

LOG = logging.getLogger(__name__)

NIC_WAIT_ATTEMPTS = 12
NIC_WAIT_DELAY = 5.0


# -- MACs ------------------------------------------------------------------------------

def _virtual_macs(net_dir: str = "/sys/class/net") -> list[str]:
    macs = []
    for name in sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []:
        if name == "lo":
            continue
        try:
            with open(os.path.join(net_dir, name, "address"), encoding="ascii") as f:
                mac = f.read().strip().lower()
        except OSError:
            continue
        if len(mac) == 17 and mac != "00:00:00:00:00:00":
            macs.append(mac)
    return macs


def local_macs(*, wait: bool, collect: Callable[[], list[dict[str, Any]]] | None = None,
               fallback: Callable[[], list[str]] = _virtual_macs,
               sleep: Callable[[float], None] = time.sleep,
               attempts: int = NIC_WAIT_ATTEMPTS, delay: float = NIC_WAIT_DELAY) -> list[str]:
    """MACs to look the node up by: physical NICs, waiting for them in a ramdisk.

    NIC drivers may still be loading when a ramdisk starts, so there the agent
    waits (IPA: 60 s in 5 s steps).  Outside a ramdisk (a container, a test
    host) virtual interfaces are all there is, and waiting would not help.
    """
    if collect is None:
        from agent.hardware import interfaces
        collect = interfaces.collect
    for attempt in range(1, attempts + 1 if wait else 2):
        macs = sorted({i["mac_address"] for i in collect() if i.get("mac_address")})
        if macs:
            return macs
        if wait and attempt < attempts:
            LOG.info("no network interface with a MAC yet (attempt %d of %d)", attempt,
                     attempts)
            sleep(delay)
    macs = fallback()
    LOG.warning("no physical network interface found; looking up with the MACs of "
                "virtual interfaces: %s", ", ".join(macs) or "(none)")
    return macs


# -- advertise address ------------------------------------------------------------------

def _usable(ip: str) -> bool:
    try:
        return not ipaddress.ip_address(ip.split("%")[0]).is_link_local
    except ValueError:
        return False


def route_source(host: str, port: int) -> str | None:
    """Source address the kernel picks for ``host`` (what ``ip route get`` reports).

    Connecting a UDP socket sends nothing; it only runs the route lookup.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        LOG.info("cannot resolve %s: %s", host, exc)
        return None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.connect(sockaddr)
                ip = s.getsockname()[0]
        except OSError as exc:
            LOG.info("no route to %s: %s", sockaddr[0], exc)
            continue
        if _usable(ip):
            return ip
    return None


def _url_host_port(url: str) -> tuple[str, int] | None:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _interface_ip(name: str) -> str | None:
    from agent.hardware import interfaces
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return interfaces.ipv4_address(s, name)


def advertise_address(config: Config, api_urls: list[str], *,
                      route: Callable[[str, int], str | None] = route_source,
                      nic_ip: Callable[[str], str | None] = _interface_ip,
                      sleep: Callable[[float], None] = time.sleep) -> str:
    """``ipa-advertise-host`` if set, else the route source towards a controller URL."""
    if config.advertise_host:
        return config.advertise_host
    attempts = max(1, config.ip_lookup_attempts)
    targets = [hp for hp in (_url_host_port(u) for u in api_urls) if hp]
    for attempt in range(1, attempts + 1):
        if config.network_interface:
            ip = nic_ip(config.network_interface)
            if ip:
                LOG.info("advertising %s, the address of %s", ip, config.network_interface)
                return ip
        for host, port in targets:
            ip = route(host, port)
            if ip:
                LOG.info("advertising %s, the source address of the route to %s", ip, host)
                return ip
        if attempt < attempts:
            LOG.info("no usable address to advertise yet (attempt %d of %d); retrying in "
                     "%.0fs", attempt, attempts, config.ip_lookup_timeout)
            sleep(config.ip_lookup_timeout)
    where = (f"interface {config.network_interface}" if config.network_interface
             else "the routes to " + ", ".join(h for h, _ in targets))
    raise AdvertiseAddressNotFound(
        f"no usable (non-link-local) address found from {where} after {attempts} attempt(s); "
        "set ipa-advertise-host to the address the controller can reach this agent on")


def callback_url(protocol: str, host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{protocol}://{host}:{port}"


def _certificate_ip(host: str) -> str:
    """The IP to put in the certificate SAN; a host name is resolved."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        ip = str(socket.getaddrinfo(host, None)[0][4][0])
    except OSError as exc:
        raise AdvertiseAddressNotFound(
            f"ipa-advertise-host {host} does not resolve ({exc}); the auto-TLS certificate "
            "needs an IP address") from None
    LOG.warning("ipa-advertise-host %s is a name; the certificate carries its address %s, "
                "and the controller verifies against that", host, ip)
    return ip


# -- startup -----------------------------------------------------------------------------

class ControllerSession:
    """What run_with_controller set up; tests and the CLI may inspect it."""

    def __init__(self) -> None:
        self.node: dict[str, Any] | None = None
        self.locked_down_reason: str | None = None
        self.callback_url: str | None = None
        self.heartbeater: Heartbeater | None = None
        self.client: ControllerClient | None = None


def run_with_controller(runtime: Runtime, *, sleep: Callable[[float], None] = time.sleep,
                        node_uuid: str | None = None) -> ControllerSession:
    """Lookup → overrides → token → advertise → API → heartbeats.

    Raises LookupFailed or AdvertiseAddressNotFound (the CLI exits non-zero so
    the service manager restarts the agent).  A lockdown returns normally with
    ``state`` stopped and nothing served.
    """
    cfg: Config = runtime.config
    state = runtime.state
    session = ControllerSession()
    client = ControllerClient(cfg.api_url, timeout=cfg.http_request_timeout,
                              verify=not cfg.insecure, request_id=cfg.global_request_id,
                              pinned_version=cfg.ironic_api_version, cafile=cfg.cafile,
                              certfile=cfg.certfile, keyfile=cfg.keyfile)
    if not client.urls:
        raise ConfigError("ipa-api-url holds no usable http(s) URL")
    session.client = client
    runtime.controller = session

    # the port first: failing here costs nothing, failing after lookup costs the token
    try:
        runtime.bind_api()
    except OSError as exc:
        raise ConfigError(f"cannot serve the API on {cfg.listen_host} port {cfg.listen_port}: "
                          f"{exc}") from None
    if cfg.hardware_initialization_delay:
        LOG.info("waiting %.0fs before touching hardware (ipa-hardware-initialization-delay)",
                 cfg.hardware_initialization_delay)
        sleep(cfg.hardware_initialization_delay)
    macs = local_macs(wait=is_ramdisk(cfg), sleep=sleep)
    # the inspection callback's answer names the node: look it up by UUID as well
    body = lookup(client, macs, timeout=cfg.lookup_timeout,
                  interval=cfg.lookup_interval, sleep=sleep, node_uuid=node_uuid)
    node = body["node"]
    state.refresh_node(node)
    session.node = node
    config = body.get("config")
    settings: dict[str, Any] = config if isinstance(config, dict) else {}
    if "heartbeat_timeout" not in settings and body.get("heartbeat_timeout") is not None:
        settings = dict(settings, heartbeat_timeout=body["heartbeat_timeout"])
    apply_overrides(cfg, settings)

    source, why = resolve_token(cfg, settings.get("agent_token"))
    if source is None:
        LOG.error("LOCKDOWN: %s. Not serving the API and not heartbeating; idling so the "
                  "service manager does not restart the agent.", why)
        session.locked_down_reason = why
        runtime.close()         # the port taken before lookup: nothing will be served
        state.stop()
        return session
    LOG.info("agent token: %s", why)

    ip = advertise_address(cfg, client.urls, sleep=sleep)
    max_version = client.max_version(client.preferred)
    if cfg.tls_cert_file or cfg.auto_tls:
        protocol = "https"
    elif max_version >= AUTO_TLS_VERSION:
        cfg.set("auto_tls", True, "controller")
        protocol = "https"
    else:
        LOG.warning("controller API %s is older than %s: no auto-TLS, serving %s",
                    format_version(max_version), format_version(AUTO_TLS_VERSION),
                    cfg.advertise_protocol)
        protocol = cfg.advertise_protocol
    cfg.set("advertise_protocol", protocol, "controller")
    try:
        server = runtime.start_api(_certificate_ip(ip) if cfg.auto_tls else ip)
    except OSError as exc:
        raise ConfigError(f"cannot serve the API on {cfg.listen_host} port {cfg.listen_port}: "
                          f"{exc}") from None
    # the listening port, unless the operator advertises another (NAT, proxy)
    port = server.port if cfg.sources.get("advertise_port") == "default" else cfg.advertise_port
    session.callback_url = callback_url(protocol, ip, port)

    # only a generated certificate is pinned by the conductor; a static one is
    # verified through the node's driver_info.agent_verify_ca
    verify_ca = runtime.cert_pem if cfg.auto_tls and not cfg.tls_cert_file else None
    heartbeater = Heartbeater(client, node["uuid"], session.callback_url, cfg, state.stopped,
                              verify_ca=verify_ca)
    runtime.runner.on_async_done.append(heartbeater.force)
    state.on_stop.append(heartbeater.stop)
    heartbeater.start()
    session.heartbeater = heartbeater
    return session
