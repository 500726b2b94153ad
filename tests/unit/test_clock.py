"""SNTP clock sync against a real NTP responder on 127.0.0.1.

The responder is a UDP server thread answering real 48-byte NTP packets; the
agent's query goes through the kernel's UDP stack like it would to a real
server.  The clock and the RTC of this machine are never touched: every test
passes ``step``/``save_rtc`` seams, and the autouse fixture below records any
call that reaches the real setters anyway and fails the test.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent import config
from agent.hardware import clock

PACKET = struct.Struct("!BBbbII4sQQQQ")
Shape = Callable[[bytes], bytes | None]


def to_ntp(unix: float) -> int:
    return int((unix + clock.NTP_UNIX_DELTA) * (1 << 32)) & ((1 << 64) - 1)


def answer(request: bytes, *, skew: float = 100.0, mode: int = 4, version: int = 4,
           leap: int = 0, stratum: int = 2, refid: bytes = b"\x7f\0\0\1",
           origin: int | None = None, receive: int | None = None,
           transmit: int | None = None) -> bytes:
    """A server's answer to ``request``, its clock ``skew`` seconds ahead of ours."""
    sent_by_client = PACKET.unpack_from(request)[10]
    now = to_ntp(time.time() + skew)
    return PACKET.pack((leap << 6) | (version << 3) | mode, stratum, 4, -20, 0, 0, refid,
                       now, sent_by_client if origin is None else origin,
                       now if receive is None else receive,
                       now if transmit is None else transmit)


class Responder:
    """An NTP server on 127.0.0.1: ``shape`` makes each answer (None: stay silent)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(1024)
            except TimeoutError:
                continue
            self.requests.append(data)
            reply = self.shape(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[Callable[[Shape], Responder]]:
    made: list[Responder] = []

    def make(shape: Shape) -> Responder:
        made.append(Responder(shape))
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture(autouse=True)
def real_clock_untouched(monkeypatch) -> Iterator[None]:
    reached: list[str] = []
    monkeypatch.setattr(clock, "_step_realtime", lambda offset: reached.append("clock"))
    monkeypatch.setattr(clock, "_write_rtc", lambda timeout: reached.append("rtc"))
    yield
    assert reached == [], "a test reached the real clock or RTC setter"


class Seams:
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.rtc = 0

    def step(self, offset: float) -> None:
        self.steps.append(offset)

    def save_rtc(self) -> None:
        self.rtc += 1


def cfg(ntp: str | None, ramdisk: str = "true") -> config.Config:
    cmdline = f"ipa-ntp-server={ntp}" if ntp else ""
    return config.load(env={}, read_proc=False, cmdline=cmdline, flags={"ramdisk": ramdisk})


@pytest.mark.parametrize("skew", [100.0, -3 * 365 * 86400.0])
def test_a_good_answer_steps_by_the_offset_and_saves_the_rtc(responder, skew: float) -> None:
    server = responder(lambda req: answer(req, skew=skew))
    seams = Seams()
    outcome = clock.sync_clock(cfg(server.address), "at start", step=seams.step,
                               save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is not None
    assert len(seams.steps) == 1 and abs(seams.steps[0] - skew) < 0.5
    assert seams.rtc == 1 and outcome.stepped and outcome.rtc_saved
    assert outcome.answer.server == server.address and outcome.answer.stratum == 2
    # what went out was a client request (mode 3, version 4) with a non-zero cookie
    first, transmit = server.requests[0][0], PACKET.unpack_from(server.requests[0])[10]
    assert len(server.requests[0]) == 48 and first & 7 == 3 and (first >> 3) & 7 == 4
    assert transmit != 0


def _kod(req: bytes) -> bytes:
    return answer(req, stratum=0, refid=b"RATE")


@pytest.mark.parametrize("shape, why", [
    (lambda req: answer(req, mode=3), "not from a server (mode 3)"),
    (lambda req: answer(req, mode=5), "not from a server (mode 5)"),
    (lambda req: answer(req, transmit=0), "zero timestamp"),
    (lambda req: answer(req, receive=0), "zero timestamp"),
    (_kod, "kiss-of-death 'RATE'"),
    (lambda req: answer(req, origin=12345), "does not match the request"),
    # a forged kiss-of-death is not believed: the origin check comes first
    (lambda req: answer(req, origin=12345, stratum=0, refid=b"DENY"), "does not match"),
    (lambda req: answer(req, leap=3), "not synchronised"),
    (lambda req: answer(req, stratum=16), "not synchronised (stratum 16)"),
    (lambda req: answer(req, version=7), "unsupported NTP version 7"),
    (lambda req: answer(req)[:40], "too short (40 bytes)"),
])
def test_a_bad_answer_is_rejected(responder, caplog, shape: Shape, why: str) -> None:
    server = responder(shape)
    seams = Seams()
    with caplog.at_level(logging.WARNING, logger="agent.hardware.clock"):
        outcome = clock.sync_clock(cfg(server.address), "at start", step=seams.step,
                                   save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is None
    assert seams.steps == [] and seams.rtc == 0
    assert why in outcome.attempts[0][2]
    assert len(caplog.records) == 1 and why in caplog.records[0].getMessage()


def test_the_next_server_is_asked_when_one_fails(responder) -> None:
    bad, good = responder(_kod), responder(lambda req: answer(req, skew=50.0))
    seams = Seams()
    outcome = clock.sync_clock(cfg(f"{bad.address},{good.address}"), "at start",
                               step=seams.step, save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is not None
    assert outcome.answer.server == good.address and abs(seams.steps[0] - 50.0) < 0.5
    assert [why is None for _, _, why in outcome.attempts] == [False, True]


def test_silent_servers_share_one_bounded_budget(responder) -> None:
    silent = [responder(lambda req: None) for _ in range(3)]
    seams = Seams()
    budget = 0.6
    outcome = clock.sync_clock(cfg(",".join(s.address for s in silent)), "at start",
                               budget=budget, step=seams.step, save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is None and seams.steps == []
    given = [allotted for _, allotted, _ in outcome.attempts]
    assert len(given) == 3 and sum(given) <= budget
    assert all(a <= clock.PER_SERVER_S for a in given)
    assert "no answer within" in outcome.attempts[0][2]
    assert silent[0].requests, "the first server was asked"


def test_a_closed_port_fails_at_once() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    outcome = clock.sync_clock(cfg(f"127.0.0.1:{port}"), "at start", step=Seams().step)
    assert outcome is not None and outcome.answer is None
    assert "connection refused" in outcome.attempts[0][2]


def test_an_unresolvable_name_is_reported() -> None:
    seams = Seams()
    outcome = clock.sync_clock(cfg("ntp.invalid"), "at start", budget=1.0, step=seams.step,
                               save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is None and seams.steps == []
    why = outcome.attempts[0][2]
    assert "does not resolve" in why or "name lookup took longer" in why


def test_a_host_name_is_resolved(responder) -> None:
    server = responder(lambda req: answer(req, skew=5.0))
    seams = Seams()
    outcome = clock.sync_clock(cfg(f"localhost:{server.port}"), "at start", step=seams.step,
                               save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is not None
    assert outcome.answer.address == "127.0.0.1" and len(seams.steps) == 1


def test_without_a_server_nothing_happens_and_nothing_is_logged(caplog) -> None:
    seams = Seams()
    with caplog.at_level(logging.DEBUG, logger="agent.hardware.clock"):
        assert clock.sync_at_start(cfg(None), step=seams.step, save_rtc=seams.save_rtc) is None
        assert clock.sync_clock(cfg(None), "x", step=seams.step) is None
    assert caplog.records == [] and seams.steps == [] and seams.rtc == 0


def test_outside_a_ramdisk_it_only_says_what_it_would_do(responder, caplog) -> None:
    server = responder(lambda req: answer(req, skew=100.0))
    seams = Seams()
    with caplog.at_level(logging.INFO, logger="agent.hardware.clock"):
        outcome = clock.sync_at_start(cfg(server.address, ramdisk="false"), step=seams.step,
                                      save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.answer is not None and not outcome.stepped
    assert seams.steps == [] and seams.rtc == 0
    text = caplog.records[-1].getMessage()
    assert "off by +" in text and "not a deploy ramdisk" in text and "left alone" in text


def test_a_refused_step_is_logged_and_the_rtc_left_alone(responder, caplog) -> None:
    server = responder(lambda req: answer(req))
    seams = Seams()

    def refuse(offset: float) -> None:
        raise PermissionError(1, "Operation not permitted")
    with caplog.at_level(logging.WARNING, logger="agent.hardware.clock"):
        outcome = clock.sync_clock(cfg(server.address), "at start", step=refuse,
                                   save_rtc=seams.save_rtc)
    assert outcome is not None and not outcome.stepped and seams.rtc == 0
    assert "Operation not permitted" in caplog.records[0].getMessage()


def test_an_unusable_setting_is_a_warning_not_a_crash(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.hardware.clock"):
        outcome = clock.sync_at_start(cfg("ntp.example:99999"), step=Seams().step)
    assert outcome is not None and outcome.answer is None and outcome.attempts == []
    assert "not usable" in caplog.records[0].getMessage()


@pytest.mark.parametrize("text, servers", [
    ("192.0.2.1", [("192.0.2.1", 123)]),
    ("ntp.example, 192.0.2.1:1123", [("ntp.example", 123), ("192.0.2.1", 1123)]),
    ("2001:db8::1", [("2001:db8::1", 123)]),
    ("[2001:db8::1]:1123,[::1]", [("2001:db8::1", 1123), ("::1", 123)]),
    (" , a ,", [("a", 123)]),
])
def test_server_lists(text: str, servers: list[tuple[str, int]]) -> None:
    assert [(s.host, s.port) for s in clock.parse_servers(text)] == servers


@pytest.mark.parametrize("text", ["host:0", "host:65536", "host:x", ":123", "[::1", "[::1]x"])
def test_bad_server_lists(text: str) -> None:
    with pytest.raises(ValueError):
        clock.parse_servers(text)


def test_ntp_timestamps_of_both_eras() -> None:
    assert clock.ntp_to_unix(clock.NTP_UNIX_DELTA << 32) == 0.0
    assert clock.ntp_to_unix((clock.NTP_UNIX_DELTA << 32) | (1 << 31)) == 0.5
    # after 2036-02-07 the 32-bit seconds wrap; RFC 4330 reads a clear top bit as era 1
    assert clock.ntp_to_unix(1 << 32) == (1 << 32) + 1 - clock.NTP_UNIX_DELTA


def test_before_power_off_syncs_then_saves_the_rtc_once(responder) -> None:
    server = responder(lambda req: answer(req, skew=-20.0))
    seams = Seams()
    outcome = clock.before_power_off(cfg(server.address), step=seams.step,
                                     save_rtc=seams.save_rtc)
    assert outcome is not None and outcome.rtc_saved
    assert len(seams.steps) == 1 and abs(seams.steps[0] + 20.0) < 0.5 and seams.rtc == 1


def test_before_power_off_saves_the_rtc_without_a_server_too() -> None:
    seams = Seams()
    assert clock.before_power_off(cfg(None), step=seams.step, save_rtc=seams.save_rtc) is None
    assert seams.steps == [] and seams.rtc == 1


def test_before_power_off_outside_a_ramdisk_touches_nothing(responder) -> None:
    server = responder(lambda req: answer(req))
    seams = Seams()
    clock.before_power_off(cfg(server.address, ramdisk="false"), step=seams.step,
                           save_rtc=seams.save_rtc)
    clock.before_power_off(cfg(None, ramdisk="false"), step=seams.step,
                           save_rtc=seams.save_rtc)
    assert seams.steps == [] and seams.rtc == 0 and len(server.requests) == 1
