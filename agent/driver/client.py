"""A small client for the v1 agent API (CLI, tests, the conductor-like driver)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from agent.errors import AgentError


class AgentAPIError(AgentError):
    """The agent answered a request with an HTTP error."""

    message = "Agent API error"

    def __init__(self, status: int, faultstring: str) -> None:
        self.status = status
        self.faultstring_text = faultstring
        super().__init__(f"HTTP {status}: {faultstring}", code=status)


class CommandFailed(AgentError):
    """The command ran and ended FAILED; ``result`` is the whole CommandResult."""

    message = "Command failed"

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        err = result.get("command_error") or {}
        self.error_type = err.get("type")
        super().__init__(f"{result.get('command_name')} {result.get('command_status')}: "
                         f"{err.get('type')}: {err.get('details') or err.get('message')}",
                         code=int(err.get("code") or 500))


class AgentClient:
    def __init__(self, url: str, token: str | None = None, verify: bool | str = True,
                 timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.verify = verify
        self.session = requests.Session()
        self.session.verify = verify

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # verify goes with every request: requests lets REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE silently replace a Session-level verify, which would
        # drop a pinned agent certificate
        return self.session.request(method, f"{self.url}{path}", verify=self.verify, **kwargs)

    def _params(self, **extra: Any) -> dict[str, Any]:
        params = {k: v for k, v in extra.items() if v is not None}
        if self.token:
            params["agent_token"] = self.token
        return params

    def _check(self, resp: requests.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            text = body.get("faultstring") if isinstance(body, dict) else resp.text[:500]
            raise AgentAPIError(resp.status_code, str(text))
        return body

    def status(self) -> dict[str, Any]:
        return self._check(self._send("GET", "/v1/status", timeout=self.timeout))

    def list(self) -> list[dict[str, Any]]:
        resp = self._send("GET", "/v1/commands/", params=self._params(), timeout=self.timeout)
        return self._check(resp)["commands"]

    def post(self, name: str, params: dict[str, Any] | None = None,
             wait: bool = False) -> dict[str, Any]:
        resp = self._send("POST", "/v1/commands/", params=self._params(wait=str(wait).lower()),
                          json={"name": name, "params": params or {}},
                          timeout=None if wait else self.timeout)
        return self._check(resp)

    def get(self, command_id: str, wait: bool = False) -> dict[str, Any]:
        resp = self._send("GET", f"/v1/commands/{command_id}",
                          params=self._params(wait="true" if wait else None),
                          timeout=None if wait else self.timeout)
        return self._check(resp)

    def cancel(self, command_id: str) -> dict[str, Any]:
        resp = self._send("POST", f"/v1/commands/{command_id}/cancel", params=self._params(),
                          timeout=self.timeout)
        return self._check(resp)

    def wait(self, result: dict[str, Any], *, poll: float = 0.5,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Poll a RUNNING result until it ends; raise CommandFailed if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while result.get("command_status") == "RUNNING":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{result.get('command_name')} still running")
            if on_progress and result.get("progress"):
                on_progress(result["progress"])
            time.sleep(poll)
            result = self.get(result["id"])
        if on_progress and result.get("progress"):
            on_progress(result["progress"])
        if result.get("command_status") != "SUCCEEDED":
            raise CommandFailed(result)
        return result

    def run(self, name: str, params: dict[str, Any] | None = None, **kwargs: Any
            ) -> dict[str, Any]:
        """Post a command and wait for it; returns the final result or raises."""
        return self.wait(self.post(name, params), **kwargs)
