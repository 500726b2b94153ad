"""A small client of Ironic's REST API: enough to drive a node through its lifecycle.

Deliberately not python-ironicclient or openstacksdk: those would pull
OpenStack libraries into the agent's virtualenv.  Every call sends the
newest microversion, so the tier sees the fields an up-to-date client sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

# states a provision action can end in without further input from us
FAILED_STATES = {"deploy failed", "clean failed", "inspect failed", "service failed",
                 "rescue failed", "unrescue failed", "error"}


class IronicError(RuntimeError):
    def __init__(self, message: str, node: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.node = node or {}


class Ironic:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["X-OpenStack-Ironic-API-Version"] = "latest"

    def request(self, method: str, path: str, expect: Iterable[int] = (200, 201, 202, 204),
                **kwargs: Any) -> Any:
        r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if r.status_code not in tuple(expect):
            raise IronicError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    # -- nodes ---------------------------------------------------------------------
    def create_node(self, **fields: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/nodes", json=fields))

    def node(self, ident: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{ident}"))

    def patch_node(self, ident: str, **values: Any) -> dict[str, Any]:
        """Set top-level or nested fields: ``patch_node(n, **{"driver_info/x": 1})``."""
        ops = [{"op": "add", "path": "/" + key, "value": value} for key, value in values.items()]
        return dict(self.request("PATCH", f"/v1/nodes/{ident}", json=ops))

    def delete_node(self, ident: str) -> None:
        self.request("DELETE", f"/v1/nodes/{ident}")

    def create_port(self, node_uuid: str, mac: str, **fields: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/ports",
                                 json={"node_uuid": node_uuid, "address": mac, **fields}))

    def provision(self, ident: str, target: str, **body: Any) -> None:
        self.request("PUT", f"/v1/nodes/{ident}/states/provision",
                     json={"target": target, **body})

    def power(self, ident: str, target: str) -> None:
        self.request("PUT", f"/v1/nodes/{ident}/states/power", json={"target": target})

    def validate(self, ident: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{ident}/validate"))

    def inventory(self, ident: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{ident}/inventory"))

    def history(self, ident: str) -> list[dict[str, Any]]:
        """The node's event history (errors and state changes Ironic recorded), oldest first."""
        return list(self.request("GET", f"/v1/nodes/{ident}/history?detail=true")["history"])

    def create_deploy_template(self, name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/deploy_templates",
                                 json={"name": name, "steps": steps}))

    def wait_for(self, ident: str, states: str | Iterable[str], timeout: float,
                 on_poll: Callable[[dict[str, Any]], None] | None = None,
                 interval: float = 0.5) -> dict[str, Any]:
        """Poll until provision_state is in ``states``; IronicError on a failed state or time."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        node: dict[str, Any] = {}
        while time.monotonic() < deadline:
            node = self.node(ident)
            if on_poll:
                on_poll(node)
            state = node["provision_state"]
            # a failed state keeps its target (e.g. "deploy failed" -> "active")
            settled = node.get("target_provision_state") is None or state in FAILED_STATES
            if state in wanted and settled:
                return node
            if state in FAILED_STATES - wanted:
                raise IronicError(f"node {ident} went to {state!r}: {node.get('last_error')}",
                                  node)
            time.sleep(interval)
        raise IronicError(f"node {ident} still {node.get('provision_state')!r} "
                          f"(target {node.get('target_provision_state')!r}) after "
                          f"{timeout:.0f}s waiting for {sorted(wanted)}; last_error "
                          f"{node.get('last_error')!r}", node)
