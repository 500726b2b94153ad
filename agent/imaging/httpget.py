"""One capped HTTP GET for small resources: checksum files and config drives.

The body is streamed and the download stops one chunk past ``limit``, so a
server that sends too much (or never stops) costs at most ``limit`` plus a
chunk of memory, not the whole body.  Each read has ``timeout``, and the
whole transfer ``deadline``, so a server that trickles cannot hold the agent.
"""

from __future__ import annotations

import time
import urllib.parse

import requests

CHUNK = 256 << 10


class GetFailed(Exception):
    """The resource could not be fetched; ``reason`` is safe to show an operator."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


def describe(url: str, cap: int = 160) -> str:
    """The URL without query, fragment or credentials, capped: signed URLs carry secrets."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        text = f"{parts.scheme}://{host}{parts.path}"
    except ValueError:
        text = "the given URL"
    return text if len(text) <= cap else text[:cap] + "..."


def why(exc: requests.RequestException) -> str:
    """A short cause; requests' own text repeats the full URL, query included."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake or certificate verification failed"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def capped_get(url: str, *, limit: int, timeout: float,
               session: requests.Session | None = None,
               headers: dict[str, str] | None = None,
               auth: tuple[str, str] | None = None,
               deadline: float | None = None) -> bytes:
    """GET ``url`` and return at most ``limit`` bytes of body; raise GetFailed otherwise."""
    own = session is None
    session = session or requests.Session()
    started = time.monotonic()
    total_s = deadline if deadline is not None else max(timeout, 1.0) * 10
    try:
        # verify per request: requests lets REQUESTS_CA_BUNDLE override the session's
        with session.get(url, headers=headers, auth=auth, stream=True,
                         timeout=(timeout, timeout), verify=session.verify) as resp:
            if resp.status_code != 200:
                raise GetFailed(f"{describe(url)} answered HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise GetFailed(f"{describe(url)} is larger than {limit} bytes",
                                too_large=True)
            body = bytearray()
            for chunk in resp.iter_content(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise GetFailed(f"{describe(url)} is larger than {limit} bytes",
                                    too_large=True)
                if time.monotonic() - started > total_s:
                    raise GetFailed(f"{describe(url)} took longer than {total_s:g}s")
            return bytes(body)
    except requests.RequestException as exc:
        raise GetFailed(f"could not fetch {describe(url)}: {why(exc)}") from None
    finally:
        if own:
            session.close()
