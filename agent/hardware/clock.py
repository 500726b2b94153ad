"""Set the system clock from NTP servers (``ipa-ntp-server``) and save it to the RTC.

A fresh machine's RTC may be off by years, and then the controller's HTTPS
certificate is "not yet valid" and the agent's own auto-TLS certificate
starts in the wrong era.  So the agent asks NTP once at start, before any TLS,
and once more before power-off, so the RTC the instance boots with is right.

This is SNTP as RFC 4330 describes a client: per server, one request and one
answer on a connected UDP socket, the answer checked (server mode, our
request's cookie echoed, no kiss-of-death, a synchronised stratum, a non-zero
transmit time) and the clock stepped by the computed offset.  Everything is
bounded by a few seconds, and nothing here stops a start or a power-off.
Outside a deploy ramdisk the clock and RTC are never touched: the agent only
logs what it would have done.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import tools
from agent.config import Config, is_ramdisk
from agent.errors import AgentError

LOG = logging.getLogger(__name__)

NTP_PORT = 123
# seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix)
NTP_UNIX_DELTA = 2_208_988_800
PACKET = struct.Struct("!BBbbII4sQQQQ")   # the 48-byte NTP header, no extensions
MODE_CLIENT, MODE_SERVER = 3, 4
LEAP_ALARM = 3                            # leap indicator "clock not synchronised"
# a whole sync (every server tried) never takes longer than this; the RTC write
# after it has its own short timeout, so a start waits at most about 7 s
SYNC_BUDGET_S = 4.0
PER_SERVER_S = 2.0
RTC_TIMEOUT_S = 3.0
# before power-off nothing waits on us, and this RTC is the one the instance boots with
RTC_POWER_OFF_TIMEOUT_S = 10.0
# below this, a server is not worth starting a query for
MIN_TRY_S = 0.05


class ClockSyncError(AgentError):
    message = "Clock sync failed"


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int = NTP_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == NTP_PORT else f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Answer:
    server: str          # as configured
    address: str         # the address that answered
    offset: float        # seconds to add to the local clock
    delay: float         # round trip, seconds
    stratum: int


@dataclasses.dataclass
class Outcome:
    """What one sync did; ``attempts`` holds (server, seconds allotted, failure or None)."""

    answer: Answer | None = None
    stepped: bool = False
    rtc_saved: bool = False
    attempts: list[tuple[str, float, str | None]] = dataclasses.field(default_factory=list)


def parse_servers(text: str) -> list[Server]:
    """``host``, ``IP``, ``host:port``, ``[IPv6]:port`` or a bare IPv6, comma-separated."""
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, str(NTP_PORT)
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError("a bracketed IPv6 address needs its closing ']'")
            port = rest[1:] or port
        elif item.count(":") == 1:
            host, port = item.split(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("each NTP server must be a host name or address, "
                             "optionally with a port between 1 and 65535")
        servers.append(Server(host, int(port)))
    return servers


def ntp_to_unix(value: int) -> float:
    """An NTP 64-bit timestamp as Unix seconds (RFC 4330 section 3: era 1 after 2036)."""
    seconds, fraction = value >> 32, value & 0xFFFFFFFF
    if seconds < 0x80000000:
        seconds += 1 << 32
    return seconds - NTP_UNIX_DELTA + fraction / (1 << 32)


def _resolve(server: Server, timeout: float) -> list[Any]:
    # getaddrinfo has no timeout of its own; a resolver that hangs is left
    # behind in its daemon thread instead of holding the start
    found: list[Any] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM))
        except (OSError, UnicodeError) as exc:
            failed.append(exc)

    worker = threading.Thread(target=lookup, name="ntp-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ClockSyncError(f"name lookup took longer than {timeout:.1f}s")
    if failed or not found:
        raise ClockSyncError("the name does not resolve")
    return found


def query(server: Server, timeout: float, label: str | None = None) -> Answer:
    """Ask one server once; raise ClockSyncError saying why its answer is unusable."""
    deadline = time.monotonic() + timeout
    family, kind, proto, _, sockaddr = _resolve(server, timeout)[0]
    # a random transmit time is the request's cookie (the server echoes it as
    # the origin time) and reveals nothing about our clock; t1 is kept locally
    cookie = secrets.randbits(64) or 1
    request = PACKET.pack((4 << 3) | MODE_CLIENT, 0, 0, 0, 0, 0, b"\0" * 4, 0, 0, 0, cookie)
    with socket.socket(family, kind, proto) as sock:
        try:
            # connected: the kernel drops datagrams from any other address
            sock.connect(sockaddr)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            t1, m1 = time.time(), time.monotonic()
            sock.send(request)
            data = sock.recv(1024)
            # t4 from the monotonic clock: a step by someone else mid-query cannot skew it
            t4 = t1 + (time.monotonic() - m1)
        except TimeoutError:
            raise ClockSyncError(f"no answer within {timeout:.1f}s") from None
        except ConnectionRefusedError:
            raise ClockSyncError("nothing listens on the NTP port (connection refused)") from None
        except OSError as exc:
            raise ClockSyncError(f"cannot reach it: {exc.strerror or exc}") from None
    t2, t3, stratum = _check(data, cookie)
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = max((t4 - t1) - (t3 - t2), 0.0)
    return Answer(label or str(server), str(sockaddr[0]), offset, delay, stratum)


def _check(data: bytes, cookie: int) -> tuple[float, float, int]:
    """The server's receive and transmit times and stratum, once the answer passes the checks."""
    if len(data) < PACKET.size:
        raise ClockSyncError(f"answer too short ({len(data)} bytes)")
    (first, stratum, _, _, _, _, refid, _, origin, receive, transmit
     ) = PACKET.unpack_from(data)
    leap, version, mode = first >> 6, (first >> 3) & 7, first & 7
    if mode != MODE_SERVER:
        raise ClockSyncError(f"answer is not from a server (mode {mode})")
    if version not in (3, 4):
        raise ClockSyncError(f"answer has unsupported NTP version {version}")
    # before anything else is believed: an answer to someone else's request,
    # a stale one or a forged one (a forged kiss-of-death included) is dropped
    if origin != cookie:
        raise ClockSyncError("answer does not match the request (origin time differs)")
    if stratum == 0:
        code = refid.decode("ascii", "replace").strip("\0 ") or "?"
        raise ClockSyncError(f"server sent kiss-of-death {code!r}")
    if leap == LEAP_ALARM or stratum > 15:
        raise ClockSyncError(f"server clock is not synchronised (stratum {stratum})")
    if transmit == 0 or receive == 0:
        raise ClockSyncError("answer has a zero timestamp")
    return ntp_to_unix(receive), ntp_to_unix(transmit), stratum


def _step_realtime(offset: float) -> None:
    now = time.clock_gettime(time.CLOCK_REALTIME)
    time.clock_settime(time.CLOCK_REALTIME, now + offset)


def _write_rtc(timeout: float) -> None:
    tools.run("hwclock", "--systohc", timeout=timeout)


def _now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def sync_clock(config: Config, when: str, *, budget: float = SYNC_BUDGET_S,
               write_rtc: bool = True, step: Callable[[float], None] | None = None,
               save_rtc: Callable[[], None] | None = None) -> Outcome | None:
    """Step the clock to the first usable answer of the ``ntp_server`` servers.

    None when no server is configured (and nothing is logged).  ``step`` and
    ``save_rtc`` default to setting CLOCK_REALTIME and ``hwclock --systohc``;
    neither runs outside a deploy ramdisk.
    """
    if not config.ntp_server:
        return None
    outcome = Outcome()
    try:
        servers = parse_servers(config.ntp_server)
    except ValueError as exc:
        LOG.warning("clock not synced %s: ntp_server is not usable: %s", when, exc)
        return outcome
    deadline = time.monotonic() + budget
    for server in servers:
        allotted = min(PER_SERVER_S, deadline - time.monotonic())
        if allotted < MIN_TRY_S:
            outcome.attempts.append((str(server), 0.0, f"not tried, the {budget:g}s budget "
                                     "was spent"))
            continue
        try:
            outcome.answer = query(server, allotted)
        except ClockSyncError as exc:
            outcome.attempts.append((str(server), allotted, exc.details))
            continue
        outcome.attempts.append((str(server), allotted, None))
        break
    answer = outcome.answer
    if answer is None:
        LOG.warning("clock not synced %s: %s; it stays at %s", when,
                    "; ".join(f"{name}: {why}" for name, _, why in outcome.attempts), _now_text())
        return outcome
    source = f"NTP server {answer.server} ({answer.address}, stratum {answer.stratum}, " \
             f"round trip {answer.delay * 1000:.0f} ms)"
    if not is_ramdisk(config):
        LOG.info("clock %s: %s says this clock is off by %+.3fs; not a deploy ramdisk, so "
                 "the clock%s left alone", when, source, answer.offset,
                 " and the RTC are" if write_rtc else " is")
        return outcome
    try:
        (step or _step_realtime)(answer.offset)
        outcome.stepped = True
        LOG.info("clock %s: stepped by %+.3fs from %s; now %s", when, answer.offset, source,
                 _now_text())
    except OSError as exc:
        LOG.warning("clock not set %s (%s says it is off by %+.3fs): %s", when, source,
                    answer.offset, exc)
    if write_rtc and outcome.stepped:
        outcome.rtc_saved = _save_rtc(save_rtc)
    return outcome


def _save_rtc(save_rtc: Callable[[], None] | None, timeout: float = RTC_TIMEOUT_S) -> bool:
    try:
        if save_rtc is None:
            _write_rtc(timeout)
        else:
            save_rtc()
    except AgentError as exc:
        LOG.info("hardware clock not written: %s", exc.details)
        return False
    return True


def sync_at_start(config: Config, *, step: Callable[[float], None] | None = None,
                  save_rtc: Callable[[], None] | None = None) -> Outcome | None:
    """The start's sync: before any TLS is used; never stops the agent from starting."""
    try:
        return sync_clock(config, "at start", step=step, save_rtc=save_rtc)
    except Exception as exc:  # noqa: BLE001 - a wrong clock is better than no agent
        LOG.warning("clock not synced at start: %s", exc)
        return None


def before_power_off(config: Config, *, step: Callable[[float], None] | None = None,
                     save_rtc: Callable[[], None] | None = None) -> Outcome | None:
    """Sync (when configured), then save the clock to the RTC, which the instance boots with.

    The RTC is written even without an NTP server, as the power path always
    did; outside a deploy ramdisk it is not.
    """
    outcome = None
    try:
        outcome = sync_clock(config, "before power off", write_rtc=False, step=step)
    except Exception as exc:  # noqa: BLE001 - the power-off must still happen
        LOG.warning("clock not synced before power off: %s", exc)
    if is_ramdisk(config):
        saved = _save_rtc(save_rtc, RTC_POWER_OFF_TIMEOUT_S)
        if outcome is not None:
            outcome.rtc_saved = saved
    return outcome
