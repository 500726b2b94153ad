"""Source stage: an HTTP(S) image as a ``readinto`` stream that survives drops.

A dropped connection resumes with ``Range: bytes=N-`` from the exact byte
already received (guarded by ``If-Range`` so a changed file is never
spliced); a server that answers 200 instead restarts the stream, which the
pipeline sees as ``RestartFromZero``.  4xx other than 408/429 is fatal at
once; 5xx and connection errors are retried with bounded backoff.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import requests
import tenacity

from agent.errors import ImageDownloadError, ImageDownloadTimeoutError

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
                 cancel_check: Callable[[], None] = lambda: None) -> None:
        self.urls = list(urls)
        self.session = session or requests.Session()
        self.session.verify = verify
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
        self._started = time.monotonic()

    # -- connection ------------------------------------------------------------------
    def _request(self, url: str, offset: int) -> requests.Response:
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._validator:
                headers["If-Range"] = self._validator
        self.requests += 1
        try:
            resp = self.session.get(url, headers=headers, auth=self.auth, stream=True,
                                    timeout=(self.timeout, self.timeout))
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
        self._adopt(self._resp, 0)

    def reopen(self) -> None:
        """Start a fresh transfer from byte 0 (after a checksum mismatch)."""
        self.close()
        self.received = 0
        self.open()

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
            LOG.warning("%s does not support resuming; restarting from byte 0", self.url)
            raise RestartFromZero()

    def readinto(self, buf: memoryview) -> int:
        """Fill up to len(buf) bytes; 0 only at the true end of the image."""
        failures = 0
        while True:
            self.cancel_check()
            self._check_duration()
            assert self._resp is not None, "open() first"
            try:
                n = self._resp.raw.readinto(buf)
            except (requests.RequestException, OSError, ValueError) as exc:
                # urllib3 wraps resets and read timeouts in several types
                n, reason = -1, str(exc)
            except Exception as exc:  # noqa: BLE001 - urllib3 ProtocolError etc.
                n, reason = -1, f"{type(exc).__name__}: {exc}"
            if n > 0:
                self.received += n
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
            LOG.warning("download interrupted (%s); resuming", reason)
            self._resp.close()
            self._resp = self._connect(self.received)
            self._adopt(self._resp, self.received)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "bytes_received": self.received, "total": self.total,
                "resumes": self.resumes, "restarts": self.restarts, "requests": self.requests}


def fetch_text(url: str, *, session: requests.Session | None = None, timeout: float = 60.0,
               headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
               limit: int = 4 << 20) -> str:
    """Download a small text resource (checksum files); errors are ImageDownloadError."""
    session = session or requests.Session()
    try:
        resp = session.get(url, headers=headers, auth=auth, timeout=(timeout, timeout))
    except requests.RequestException as exc:
        raise ImageDownloadError(f"could not fetch {url}: {exc}") from exc
    if resp.status_code != 200:
        raise ImageDownloadError(f"could not fetch {url}: HTTP {resp.status_code}")
    if len(resp.content) > limit:
        raise ImageDownloadError(f"{url} is larger than {limit} bytes")
    return resp.text
