"""Requests to the controller (the Ironic API): microversions, headers, lookup, heartbeat.

Every call carries ``X-OpenStack-Ironic-API-Version``: without it Ironic
serves 1.1 and the ramdisk endpoints answer 404.  The version sent is capped
per call the way IPA caps it (1.62 for lookup, 1.68 for heartbeat), so an
older API never sees a field it would reject.  URLs are tried in order and a
URL that answered moves to the front (reference §8.1–8.5).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

LOG = logging.getLogger(__name__)

Version = tuple[int, int]
FALLBACK_VERSION: Version = (1, 31)
LOOKUP_VERSION: Version = (1, 62)
HEARTBEAT_VERSION: Version = (1, 68)
AGENT_VERSION_FIELD: Version = (1, 36)
TOKEN_VERSION: Version = (1, 62)
AUTO_TLS_VERSION: Version = (1, 68)


def parse_version(text: Any) -> Version | None:
    try:
        major, minor = str(text).strip().split(".")
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


def format_version(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def error_text(resp: requests.Response) -> str:
    """The human part of an Ironic error body (``error_message`` holds JSON text)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300].strip() or resp.reason or ""
    if isinstance(body, dict) and "error_message" in body:
        inner = body["error_message"]
        try:
            inner = json.loads(inner)
        except (TypeError, ValueError):
            return str(inner)
        if isinstance(inner, dict):
            return str(inner.get("faultstring") or inner)
        return str(inner)
    return str(body)[:300]


class AttemptFailed(Exception):
    """One lookup attempt over all URLs failed; ``conflict`` marks an HTTP 409."""

    def __init__(self, reason: str, conflict: bool = False) -> None:
        super().__init__(reason)
        self.conflict = conflict


class HeartbeatRejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class ControllerClient:
    def __init__(self, urls: list[str], *, timeout: float = 30.0, verify: bool | str = True,
                 request_id: str | None = None, pinned_version: str | None = None,
                 session: requests.Session | None = None, cafile: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None) -> None:
        # agent.ironic.mdns replaces "mdns" at start; one left here was never resolved
        self.urls = [u for u in urls if u != "mdns"]
        if len(self.urls) != len(urls):
            LOG.warning("ipa-api-url entry 'mdns' was not resolved through mDNS; ignoring it")
        self.timeout = timeout
        self.request_id = request_id
        self.pinned = parse_version(pinned_version) if pinned_version else None
        self.session = session or requests.Session()
        # passed on every call: requests lets REQUESTS_CA_BUNDLE override a
        # session-level verify, which would silently undo ipa-insecure (or the cafile)
        # verify=False is ipa-insecure and beats the cafile; otherwise Ironic's CA, when given
        self.verify: bool | str = cafile if verify is True and cafile else verify
        # requests' cert=: a client certificate, with its key when that is a separate file
        self.cert: str | tuple[str, str] | None = (
            (certfile, keyfile) if certfile and keyfile else certfile)
        self._max: dict[str, Version] = {}

    # -- versions and headers ---------------------------------------------------------
    def max_version(self, url: str) -> Version:
        """The API's maximum microversion (``default_version.version`` of ``GET /``)."""
        if self.pinned:
            return self.pinned
        if url in self._max:
            return self._max[url]
        try:
            resp = self.session.get(f"{url}/", headers={"Accept": "application/json"},
                                    timeout=self.timeout, verify=self.verify,
                                    cert=self.cert)
            found = parse_version(resp.json()["default_version"]["version"])
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            LOG.warning("cannot detect the API version of %s (%s); assuming %s", url, exc,
                        format_version(FALLBACK_VERSION))
            return FALLBACK_VERSION
        if found is None:
            return FALLBACK_VERSION
        LOG.info("controller %s supports API versions up to %s", url, format_version(found))
        self._max[url] = found
        return found

    def headers(self, version: Version) -> dict[str, str]:
        headers = {"X-OpenStack-Ironic-API-Version": format_version(version),
                   "Accept": "application/json", "Content-Type": "application/json"}
        if self.request_id:
            headers["X-OpenStack-Request-ID"] = self.request_id
        return headers

    def promote(self, url: str) -> None:
        self.urls.remove(url)
        self.urls.insert(0, url)

    @property
    def preferred(self) -> str:
        return self.urls[0]

    # -- lookup ---------------------------------------------------------------------
    def lookup(self, macs: list[str], node_uuid: str | None = None) -> dict[str, Any]:
        """One attempt over every URL; returns the body or raises AttemptFailed."""
        if not self.urls:
            raise AttemptFailed("no usable controller URL")
        reasons = []
        conflict = False
        for url in list(self.urls):
            version = min(self.max_version(url), LOOKUP_VERSION)
            params = {"addresses": ",".join(macs)}
            if node_uuid:
                params["node_uuid"] = node_uuid
            try:
                resp = self.session.get(f"{url}/v1/lookup", params=params,
                                        headers=self.headers(version), timeout=self.timeout,
                                        verify=self.verify, cert=self.cert)
            except requests.RequestException as exc:
                reasons.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            if resp.status_code != 200:
                conflict = conflict or resp.status_code == 409
                reasons.append(f"{url}: HTTP {resp.status_code} {error_text(resp)}".rstrip())
                continue
            try:
                body = resp.json()
                uuid = body["node"]["uuid"]
            except (ValueError, KeyError, TypeError):
                reasons.append(f"{url}: the answer has no node.uuid")
                continue
            if not isinstance(uuid, str) or not uuid:
                reasons.append(f"{url}: the answer has no node.uuid")
                continue
            self.promote(url)
            return body
        raise AttemptFailed("; ".join(reasons), conflict=conflict)

    # -- heartbeat ------------------------------------------------------------------
    def heartbeat(self, node_uuid: str, callback_url: str, token: str | None,
                  agent_version: str, verify_ca: str | None) -> str:
        """POST one heartbeat; returns the URL that took it, raises on any failure.

        A connection failure moves on to the next URL; an HTTP answer is final
        (another API of the same deployment would say the same).
        """
        errors = []
        for url in list(self.urls):
            max_version = self.max_version(url)
            version = min(max_version, HEARTBEAT_VERSION)
            body: dict[str, Any] = {"callback_url": callback_url}
            if token and version >= TOKEN_VERSION:
                body["agent_token"] = token
            if version >= AGENT_VERSION_FIELD:
                body["agent_version"] = agent_version
            if verify_ca and version >= AUTO_TLS_VERSION:
                body["agent_verify_ca"] = verify_ca
            try:
                resp = self.session.post(f"{url}/v1/heartbeat/{node_uuid}", json=body,
                                         headers=self.headers(version), timeout=self.timeout,
                                         verify=self.verify, cert=self.cert)
            except requests.RequestException as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            if not 200 <= resp.status_code < 300:
                raise HeartbeatRejected(resp.status_code, error_text(resp))
            self.promote(url)
            return url
        raise ConnectionError("; ".join(errors) or "no usable controller URL")
