"""Source stage: an HTTP(S) image as a ``readinto`` stream that survives drops.

A dropped connection resumes with ``Range: bytes=N-`` from the exact byte
already received (guarded by ``If-Range`` so a changed file is never
spliced); a server that answers 200 instead restarts the stream, which the
pipeline sees as ``RestartFromZero``.  4xx other than 408/429 is fatal at
once; 5xx and connection errors are retried with bounded backoff.

Reconnections are bounded too: at most ``retries`` restarts from byte 0, at
most ``retries`` reconnections in a row that bring no byte beyond the furthest
one already seen, and no longer than ``stall_limit`` seconds without such a
byte.  A server that cuts every response at the same place therefore fails
the download instead of having the disk rewritten forever.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import requests
import tenacity

from agent.errors import ImageDownloadError, ImageDownloadTimeoutError
from agent.imaging.httpget import GetFailed, capped_get, describe

LOG = logging.getLogger(__name__)
RETRYABLE_4XX = {408, 429}
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAX_BACKOFF_S = 60.0


class RestartFromZero(Exception):
    """The server cannot resume; the stream starts again at byte 0."""


class FatalHTTPError(ImageDownloadError):
    pass


class _Retryable(Exception):
    pass


class HTTPSource:
    def __init__(self, urls: tuple[str, ...] | list[str], *,
                 session: requests.Session | None = None, headers: dict[str, str] | None = None,
                 auth: tuple[str, str] | None = None, proxies: dict[str, str] | None = None,
                 timeout: float = 60.0, retries: int = 9, retry_interval: float = 10.0,
                 max_duration: float = 0.0, verify: bool = True,
                 cancel_check: Callable[[], None] = lambda: None,
                 stall_limit: float | None = None) -> None:
        self.urls = list(urls)
        self.session = session or requests.Session()
        self.session.verify = verify
        self.verify = verify
        if proxies:
            self.session.proxies.update(proxies)
        self.headers = dict(headers or {})
        self.auth = auth
        self.timeout = timeout
        self.retries = retries
        self.retry_interval = retry_interval
        self.max_duration = max_duration
        self.cancel_check = cancel_check
        self.url: str | None = None
        self.total: int | None = None
        self.received = 0
        self.resumes = 0
        self.restarts = 0
        self.requests = 0
        self._validator: str | None = None
        self._resp: requests.Response | None = None
        self._readinto: Callable[[memoryview], int] | None = None
        self._started = time.monotonic()
        # every reconnection may wait up to ``timeout`` to connect and to read
        self.stall_limit = stall_limit if stall_limit is not None else \
            max(self.timeout, 1.0) * (self.retries + 1)
        self._furthest = 0                  # furthest byte received on any pass
        self._furthest_at = time.monotonic()
        self._furthest_at_last_cut = 0
        self._stuck = 0                     # reconnections in a row without a new byte

    # -- connection ------------------------------------------------------------------
    def _request(self, url: str, offset: int) -> requests.Response:
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._validator:
                headers["If-Range"] = self._validator
        self.requests += 1
        try:
            # per request: requests lets REQUESTS_CA_BUNDLE override a session's verify=False
            resp = self.session.get(url, headers=headers, auth=self.auth, stream=True,
                                    timeout=(self.timeout, self.timeout), verify=self.verify)
        except requests.RequestException as exc:
            raise _Retryable(f"{url}: {exc}") from exc
        if resp.status_code in (200, 206):
            return resp
        resp.close()
        reason = f"{url} answered HTTP {resp.status_code} {resp.reason}"
        if 400 <= resp.status_code < 500 and resp.status_code not in RETRYABLE_4XX:
            raise FatalHTTPError(reason)
        raise _Retryable(reason)

    def _connect(self, offset: int) -> requests.Response:
        """Open at ``offset``, retrying each URL; 4xx moves on to the next URL."""
        errors = []
        for url in ([self.url] if self.url and offset else self.urls):
            retrying = tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self.retries + 1),
                wait=tenacity.wait_exponential(multiplier=self.retry_interval,
                                               max=max(self.retry_interval, MAX_BACKOFF_S)),
                retry=tenacity.retry_if_exception_type(_Retryable),
                before_sleep=lambda rs: LOG.warning(
                    "image download attempt %d failed: %s", rs.attempt_number,
                    rs.outcome.exception() if rs.outcome else ""),
                sleep=self._sleep, reraise=True)
            try:
                resp = retrying(self._request, url, offset)
                self.url = url
                return resp
            except (FatalHTTPError, _Retryable) as exc:
                errors.append(str(exc))
                LOG.error("giving up on %s: %s", url, exc)
        raise ImageDownloadError("; ".join(errors) or "no image URL could be opened")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.cancel_check()
            self._check_duration()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _check_duration(self) -> None:
        if self.max_duration and time.monotonic() - self._started > self.max_duration:
            raise ImageDownloadTimeoutError(
                f"image download exceeded the maximum duration of {self.max_duration:g}s")

    def open(self) -> None:
        self._resp = self._connect(0)
        self._readinto = body_reader(self._resp)
        self._adopt(self._resp, 0)

    def reopen(self) -> None:
        """Start a fresh transfer from byte 0 (after a checksum mismatch)."""
        self.close()
        self.received = 0
        # a deliberate second pass: progress is measured afresh
        self._furthest = self._furthest_at_last_cut = self._stuck = 0
        self._furthest_at = time.monotonic()
        self.open()

    def _interrupted(self, reason: str) -> None:
        """The transfer broke: refuse to reconnect once it stopped getting anywhere."""
        if self._furthest > self._furthest_at_last_cut:
            self._stuck = 0
        else:
            self._stuck += 1
        self._furthest_at_last_cut = self._furthest
        where = f"at byte {self.received} of {self.total if self.total is not None else '?'}"
        if self._stuck > self.retries:
            raise ImageDownloadError(
                f"download of {describe(self.url or '')} gave up {where}: {self._stuck} "
                f"reconnections in a row brought no new data ({reason})")
        stalled = time.monotonic() - self._furthest_at
        if stalled > self.stall_limit:
            raise ImageDownloadError(
                f"download of {describe(self.url or '')} gave up {where}: no new data for "
                f"{stalled:.0f}s across reconnections, the limit is {self.stall_limit:g}s "
                f"({reason})")
        if self._stuck:
            # the same cut again: do not hammer the server
            self._sleep(min(self.retry_interval * self._stuck, MAX_BACKOFF_S))

    def _adopt(self, resp: requests.Response, offset: int) -> None:
        if resp.status_code == 206:
            match = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                resp.close()
                raise ImageDownloadError(
                    f"server resumed at the wrong place: Content-Range "
                    f"{resp.headers.get('Content-Range')!r}, expected byte {offset}")
            self.resumes += 1
            LOG.info("resumed %s at byte %d", self.url, offset)
            return
        length = resp.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self._validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if offset:
            # asked for a range, got the whole file: splice nothing, start over
            self.restarts += 1
            self.received = 0
            if self.restarts > self.retries:
                resp.close()
                raise ImageDownloadError(
                    f"{describe(self.url or '')} cannot resume and the download broke "
                    f"{self.restarts} times; gave up after restarting from byte 0 "
                    f"{self.retries} times")
            LOG.warning("%s does not support resuming; restarting from byte 0 (%d of at most "
                        "%d)", describe(self.url or ''), self.restarts, self.retries)
            raise RestartFromZero()

    def readinto(self, buf: memoryview) -> int:
        """Fill up to len(buf) bytes; 0 only at the true end of the image."""
        failures = 0
        while True:
            self.cancel_check()
            self._check_duration()
            assert self._resp is not None and self._readinto is not None, "open() first"
            try:
                n = self._readinto(buf)
            except (requests.RequestException, OSError, ValueError) as exc:
                # urllib3 wraps resets and read timeouts in several types
                n, reason = -1, str(exc)
            except Exception as exc:  # noqa: BLE001 - urllib3 ProtocolError etc.
                n, reason = -1, f"{type(exc).__name__}: {exc}"
            if n > 0:
                self.received += n
                if self.received > self._furthest:
                    self._furthest = self.received
                    self._furthest_at = time.monotonic()
                return n
            if n == 0 and (self.total is None or self.received >= self.total):
                if self.total is not None and self.received > self.total:
                    raise ImageDownloadError(f"received {self.received} bytes, more than the "
                                             f"announced {self.total}")
                return 0
            if n == 0:
                reason = f"connection closed at byte {self.received} of {self.total}"
            failures += 1
            if failures > self.retries:
                raise ImageDownloadError(f"download of {self.url} failed at byte "
                                         f"{self.received}: {reason}")
            self._resp.close()
            self._interrupted(reason)
            LOG.warning("download interrupted (%s); resuming", reason)
            self._resp = self._connect(self.received)
            # before _adopt: a 200 restarts the stream on this new response
            self._readinto = body_reader(self._resp)
            self._adopt(self._resp, self.received)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "bytes_received": self.received, "total": self.total,
                "resumes": self.resumes, "restarts": self.restarts, "requests": self.requests}


def body_reader(resp: requests.Response) -> Callable[[memoryview], int]:
    """``readinto`` for the response's body, from the socket straight into the buffer.

    urllib3's ``readinto`` reads into a new bytes object and copies that over,
    under the GIL: a second copy of every image byte, measured at nearly half
    the receiving thread's CPU (bench/stream_profile.py).  The http.client
    response beneath it reads into the caller's buffer.  Both give the bytes
    as served (requests asks urllib3 not to decode the body), and both return
    0 when the body ends or the connection closes; ``readinto`` judges which.
    """
    raw = resp.raw
    inner = getattr(raw, "_fp", None)
    if isinstance(inner, http.client.HTTPResponse) and not getattr(raw, "decode_content", True):
        return inner.readinto
    return raw.readinto


def fetch_text(url: str, *, session: requests.Session | None = None, timeout: float = 60.0,
               headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
               limit: int = 4 << 20) -> str:
    """Download a small text resource (checksum files); errors are ImageDownloadError.

    Pass the image's ``session`` so TLS verification (``insecure``) and proxies
    apply to the checksum file exactly as they do to the image.
    """
    try:
        body = capped_get(url, limit=limit, timeout=timeout, session=session,
                          headers=headers, auth=auth)
    except GetFailed as exc:
        raise ImageDownloadError(f"checksum file: {exc.reason}") from None
    return body.decode("utf-8", "replace")
