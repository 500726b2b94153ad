"""Finding the controller through multicast DNS (``ipa-api-url=mdns``, ``ipa-use-mdns``).

Ironic's conductor (``[conductor] enable_mdns``) publishes the service
``baremetal._openstack._tcp.local.``: an SRV record (host, port), addresses
and a TXT record whose ``protocol`` and ``path`` complete the URL; other TXT
keys named ``ipa_<setting>`` offer agent settings.  The URL is built the way
IPA builds it: ``protocol`` from TXT, else ``http`` on port 80 and ``https``
on any other port; the SRV host when it is a real DNS name (TLS verifies
names), otherwise the first advertised address the kernel has a route to.

mDNS answers are not authenticated: anyone on the segment can answer.  So a
TXT record may only set the settings listed in ``mdns_allowed_overrides``
(IPA's default pair), never one the operator gave, and never the settings
that steer discovery itself.  zeroconf is imported only when mDNS is asked
for, so an agent that does not use it pays no memory for it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from agent.config import BY_NAME, Config
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:       # zeroconf is imported only when mDNS is used
    import zeroconf

LOG = logging.getLogger(__name__)

SERVICE_TYPE = "_openstack._tcp.local."
API_SERVICE = "baremetal"
INSPECTION_SERVICE = "baremetal-introspection"
# one query round; a fresh socket set per round picks up addresses that DHCP
# gave an interface while the agent was already asking
ROUND_SECONDS = 5.0
# pause after a round that could not even open a socket (no address yet)
NO_SOCKET_PAUSE = 1.0
# never settable from a TXT record: they decide whether and where mDNS is asked
PROTECTED = frozenset({"api_url", "use_mdns", "standalone"})
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*$")


class MdnsLookupFailed(AgentError):
    """No usable answer from mDNS: nobody answered, or the answer was unusable."""

    code = 404
    message = "Cannot find the service through multicast DNS"


@dataclasses.dataclass(frozen=True)
class Record:
    """One resolved mDNS service, decoded."""

    server: str
    port: int | None
    addresses: list[str]
    properties: dict[str, str]


# -- building the URL -------------------------------------------------------------------

def routable(address: str, port: int) -> bool:
    """Whether the kernel has a route to ``address`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, port))
    except OSError:
        return False
    return True


def choose_address(addresses: Iterable[str], port: int,
                   route: Callable[[str, int], bool] = routable) -> str:
    """The first advertised address with a route, else the first usable one.

    Loopback is the responder's own view, and an IPv6 link-local address
    cannot go into a URL without naming our interface: both are skipped.
    """
    usable = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or (
                ip.version == 6 and ip.is_link_local):
            continue
        usable.append(str(ip))
    if not usable:
        raise MdnsLookupFailed("the answer holds no usable address (only loopback, IPv6 "
                               "link-local or none at all)")
    for address in usable:
        if route(address, port):
            return address
    LOG.warning("mDNS: no route to any advertised address (%s); trying %s anyway",
                ", ".join(usable), usable[0])
    return usable[0]


def build_url(record: Record, route: Callable[[str, int], bool] = routable) -> str:
    """The endpoint URL a record describes; MdnsLookupFailed if it is unusable."""
    port = record.port
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise MdnsLookupFailed("the answer advertises no valid port (1-65535)")
    protocol = record.properties.get("protocol", "").strip().lower()
    if not protocol:
        # what IPA assumes, and what Ironic relies on when it leaves protocol out
        protocol = "http" if port == 80 else "https"
    if protocol not in ("http", "https"):
        raise MdnsLookupFailed("the answer's TXT protocol is neither http nor https")
    path = record.properties.get("path", "").strip()
    if path and not _PATH.match(path):
        raise MdnsLookupFailed("the answer's TXT path is not a plain URL path "
                               "(it must start with '/' and hold no spaces, '?' or '#')")
    server = record.server.rstrip(".")
    if record.server and not record.server.endswith(".local."):
        # Ironic sets the SRV host only when its API URL names a host; TLS
        # checks that name, so it is used as it is
        if not _HOSTNAME.match(server):
            raise MdnsLookupFailed("the answer's SRV host is not a valid host name")
        host = server
    else:
        host = choose_address(record.addresses, port, route)
        if ":" in host:
            host = f"[{host}]"
    return f"{protocol}://{host}:{port}{path.rstrip('/')}"


# -- asking -----------------------------------------------------------------------------

def _decode(info: zeroconf.ServiceInfo) -> Record:
    properties: dict[str, str] = {}
    for key, value in (info.properties or {}).items():
        try:
            name = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        except UnicodeDecodeError:
            raise MdnsLookupFailed("the answer's TXT record has a key that is not UTF-8"
                                   ) from None
        if value is None:
            continue            # a key without '=': a flag no part of this uses
        try:
            properties[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            LOG.debug("mDNS: TXT value of %.40r is not UTF-8; ignored", name)
    return Record(server=info.server or "", port=info.port,
                  addresses=info.parsed_addresses(), properties=properties)


def _interface_choice(names: list[str]) -> list[str | int]:
    """zeroconf's interface list: IPv4 addresses, and IPv6 interface indexes.

    ``mdns_interfaces`` names interfaces or IP addresses; empty means every
    interface but loopback (a responder there would be this machine itself,
    and zeroconf's IPv6 sends on ``lo`` only fill the log with errors).
    """
    import ifaddr  # zeroconf's own dependency

    chosen: list[str | int] = []
    missing = []
    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    targets = names or [n for n, a in adapters.items() if not _is_loopback(a)]
    for entry in targets:
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            pass
        else:
            chosen.append(str(ip))      # zeroconf maps an IPv6 address to its interface
            continue
        adapter = adapters.get(entry)
        if adapter is None:
            missing.append(entry)
            continue
        for item in adapter.ips:
            if isinstance(item.ip, str):
                chosen.append(item.ip)
            elif adapter.index is not None and adapter.index not in chosen:
                chosen.append(adapter.index)    # IPv6 joins the group by interface index
    if missing:
        LOG.debug("mDNS: mdns_interfaces entries not present (yet): %s", ", ".join(missing))
    if not chosen:
        raise RuntimeError("no interface to ask on has an address yet"
                           + (" (mdns_interfaces)" if names else ""))
    return list(dict.fromkeys(chosen))


def _ip_text(ip: Any) -> str:
    return ip if isinstance(ip, str) else str(ip[0])


def _is_loopback(adapter: Any) -> bool:
    return adapter.nice_name == "lo" or all(
        ipaddress.ip_address(_ip_text(i.ip).split("%")[0]).is_loopback for i in adapter.ips)


def _open(zc_mod: Any, interfaces: list[str]) -> zeroconf.Zeroconf:
    # with a list, zeroconf picks IPv4, IPv6 or both from what the list holds
    return zc_mod.Zeroconf(interfaces=_interface_choice(interfaces))


def discover(service: str, *, timeout: float, interfaces: list[str] | None = None,
             setting: str = "ipa-api-url", clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> Record:
    """Ask for ``<service>._openstack._tcp.local.`` until it answers or ``timeout`` ends."""
    import zeroconf as zc_mod

    name = f"{service}.{SERVICE_TYPE}"
    where = ", ".join(interfaces) if interfaces else "all interfaces"
    started = clock()
    deadline = started + timeout
    rounds = 0
    last = "nothing answered"
    while (left := deadline - clock()) > 0:
        rounds += 1
        try:
            zc = _open(zc_mod, interfaces or [])
        except (OSError, RuntimeError, ValueError) as exc:
            # no interface has an address yet (DHCP still running): wait for one
            if last != (last := f"cannot listen for mDNS: {exc}"):
                LOG.info("mDNS: %s", last)
            sleep(min(NO_SOCKET_PAUSE, max(0.0, deadline - clock())))
            continue
        try:
            info = zc.get_service_info(SERVICE_TYPE, name,
                                       timeout=max(1, int(min(ROUND_SECONDS, left) * 1000)))
            if info is None:
                # zeroconf 0.154 can miss an answer to its first (unicast) question
                # that it did put in its cache: seen with IPv6-only interfaces
                cached = zc_mod.ServiceInfo(SERVICE_TYPE, name)
                info = cached if cached.load_from_cache(zc) else None
        except (OSError, zc_mod.Error) as exc:
            last = f"query failed: {exc}"
            info = None
        finally:
            zc.close()
        if info is not None:
            record = _decode(info)
            LOG.info("mDNS: %s answered after %.1fs (round %d)", name, clock() - started,
                     rounds)
            return record
        LOG.info("mDNS: no answer for %s yet (%.0fs of %.0fs)", name, clock() - started,
                 timeout)
    raise MdnsLookupFailed(
        f"no usable answer for {name} on {where} within {timeout:g}s ({rounds} round(s); "
        f"last: {last}). Is it published on this network segment (Ironic: [conductor] "
        f"enable_mdns)? Otherwise set {setting} to the service's URL")


def find(service: str, cfg: Config, setting: str) -> tuple[str, dict[str, str]]:
    """The service's URL and its remaining TXT properties."""
    record = discover(service, timeout=cfg.mdns_timeout, interfaces=cfg.mdns_interfaces,
                      setting=setting)
    url = build_url(record)
    extra = {k: v for k, v in record.properties.items() if k not in ("protocol", "path")}
    return url, extra


# -- applying ---------------------------------------------------------------------------

def apply_overrides(cfg: Config, properties: dict[str, str]) -> list[str]:
    """Set the allowed ``ipa_<setting>`` TXT properties; return the names set."""
    applied = []
    allowed = set(cfg.mdns_allowed_overrides)
    for key, value in sorted(properties.items()):
        if not key.startswith("ipa_"):
            LOG.info("mDNS: TXT property %.40r is not an ipa_* setting; ignored", key)
            continue
        name = key[len("ipa_"):]
        setting = BY_NAME.get(name)
        if setting is None or name in PROTECTED or name.startswith("mdns_"):
            LOG.warning("mDNS: TXT property %.40r names no setting a record may set; ignored",
                        key)
            continue
        if name not in allowed:
            LOG.warning("mDNS: TXT property %s ignored: %s is not in mdns_allowed_overrides",
                        key, name)
            continue
        source = cfg.sources.get(name, "default")
        if source != "default":
            LOG.warning("mDNS: TXT property %s ignored: %s was given (%s), and an "
                        "unauthenticated answer does not override the operator", key, name,
                        source)
            continue
        if name.endswith("_url") and not value.startswith(("http://", "https://")):
            LOG.warning("mDNS: TXT property %s ignored: not an http(s) URL", key)
            continue
        try:
            cfg.set(name, value, "mdns")
        except ConfigError:
            LOG.warning("mDNS: TXT property %s ignored: not a valid value for %s", key, name)
            continue
        LOG.info("mDNS: %s set from the TXT record", name)
        applied.append(name)
    return applied


def wanted(cfg: Config) -> bool:
    if cfg.standalone:
        return False
    return ("mdns" in cfg.api_url or (cfg.use_mdns and not cfg.api_url)
            or cfg.inspection_callback_url == "mdns")


def resolve_at_start(cfg: Config) -> None:
    """Replace ``mdns`` in the API and inspection URLs with what mDNS answers.

    ``ipa-api-url=mdns`` alone: no answer is fatal (MdnsLookupFailed), as in
    IPA.  Next to other URLs, or through ``ipa-use-mdns`` with no URL at all,
    a failure only warns.  An inspection callback of ``mdns`` asks for
    ``baremetal-introspection``; failing that, inspection is skipped.
    """
    if not wanted(cfg):
        return
    explicit = "mdns" in cfg.api_url
    if explicit or (cfg.use_mdns and not cfg.api_url):
        others = [u for u in cfg.api_url if u != "mdns"]
        try:
            url, extra = find(API_SERVICE, cfg, "ipa-api-url")
        except MdnsLookupFailed as exc:
            if explicit and not others:
                raise
            LOG.warning("mDNS: %s; %s", exc.details,
                        "using the other ipa-api-url entries" if others
                        else "no controller: no lookup and no heartbeat")
            if explicit:
                cfg.set("api_url", others, "mdns")
        else:
            urls = [url if u == "mdns" else u for u in cfg.api_url] or [url]
            cfg.set("api_url", list(dict.fromkeys(urls)), "mdns")
            LOG.info("mDNS: controller at %s", url)
            apply_overrides(cfg, extra)
    if cfg.inspection_callback_url == "mdns":
        try:
            url, extra = find(INSPECTION_SERVICE, cfg, "ipa-inspection-callback-url")
        except MdnsLookupFailed as exc:
            LOG.error("inspection skipped: %s", exc.details)
            cfg.set("inspection_callback_url", "", "mdns")
        else:
            # the record names the service's root, as a catalog entry would
            cfg.set("inspection_callback_url", url + "/v1/continue", "mdns")
            LOG.info("mDNS: inspection callback at %s/v1/continue", url)
            apply_overrides(cfg, extra)
