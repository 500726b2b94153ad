"""A stand-in for the Ironic API's ramdisk endpoints, for tests and for operators without Ironic.

It answers ``GET /``, ``GET /v1/lookup`` and ``POST /v1/heartbeat/<uuid>``
the way Ironic 39 does (reference §8): microversion negotiation, a one-time
token that is masked on later lookups, token checks on heartbeats, and the
callback URL and certificate pinned at the first heartbeat.  It also serves
``GET /standin/nodes/<uuid>``, which hands a conductor-like driver what Ironic
keeps in its database (agent URL, token, pinned certificate), and
``POST /standin/nodes/<uuid>/reset``, which forgets them the way Ironic does
at power off.  Every request is recorded for tests.

Run it: ``deploy-agent standin --port 6385 --node-json node.json``.
It listens on 127.0.0.1 unless told otherwise, because it hands out tokens.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid as uuid_mod
from typing import Any

from flask import Flask, Response, request
from werkzeug.serving import make_server

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MASK = "******"
LOOKUP_STATES = {"deploying", "wait call-back", "cleaning", "clean wait", "inspecting",
                 "inspect wait", "rescuing", "rescue wait", "service wait"}
DEFAULT_CONFIG: dict[str, Any] = {
    "heartbeat_timeout": 300, "agent_token_required": True,
    "agent_md5_checksum_enable": True, "disable_deep_image_inspection": False,
    "permitted_image_formats": ["raw", "gpt", "qcow2", "iso"],
    "agent_skip_bmc_detect": False, "enable_bios_bootloader_install": False,
    "tls_min_version": "1.3", "tls_cipher_suites": None,
}
SECRET_KEYS = ("password", "secret", "configdrive", "token")


def _version(text: str | None) -> tuple[int, int]:
    if not text:
        return (1, 1)
    if text.strip().lower() == "latest":
        return (99, 99)
    major, minor = text.split(".")
    return int(major), int(minor)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if any(s in k.lower() for s in SECRET_KEYS) else _mask(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


@dataclasses.dataclass
class StandinNode:
    uuid: str
    macs: list[str] | None = None           # None: any valid MAC matches
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    instance_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    driver_internal_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    provision_state: str = "wait call-back"
    token: str | None = None
    token_pregenerated: bool = False
    agent_url: str | None = None
    agent_verify_ca: str | None = None
    agent_version: str | None = None
    heartbeats: int = 0
    last_heartbeat: float | None = None

    def public(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "properties": _mask(self.properties),
                "instance_info": _mask(self.instance_info),
                "driver_internal_info": _mask(self.driver_internal_info),
                "links": [{"href": f"/v1/nodes/{self.uuid}", "rel": "self"}]}

    def agent_info(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "provision_state": self.provision_state,
                "agent_url": self.agent_url, "agent_token": self.token,
                "agent_verify_ca": self.agent_verify_ca, "agent_version": self.agent_version,
                "heartbeats": self.heartbeats, "last_heartbeat": self.last_heartbeat,
                "node": {"uuid": self.uuid, "properties": self.properties,
                         "instance_info": self.instance_info,
                         "driver_internal_info": self.driver_internal_info}}


class StandinController:
    def __init__(self, *, version: str = "1.99", config: dict[str, Any] | None = None,
                 require_tls: bool = True, host: str = "127.0.0.1", port: int = 0) -> None:
        self.version = version
        self.config = dict(DEFAULT_CONFIG, **(config or {}))
        self.require_tls = require_tls
        self.nodes: dict[str, StandinNode] = {}
        self.requests: list[dict[str, Any]] = []
        # scripted answers, consumed one per request before normal handling
        self.lookup_statuses: list[int] = []
        self.heartbeat_statuses: list[int] = []
        self.cond = threading.Condition()
        self.app = self._build_app()
        self._server = make_server(host, port, self.app, threaded=True)
        self._thread: threading.Thread | None = None

    # -- setup ---------------------------------------------------------------------
    def add_node(self, node: dict[str, Any] | None = None, *, macs: list[str] | None = None,
                 provision_state: str = "wait call-back", token: str | None = None
                 ) -> StandinNode:
        node = dict(node or {})
        entry = StandinNode(uuid=node.get("uuid") or str(uuid_mod.uuid4()),
                        macs=[m.lower() for m in macs] if macs is not None else None,
                        properties=node.get("properties") or {},
                        instance_info=node.get("instance_info") or {},
                        driver_internal_info=node.get("driver_internal_info") or {},
                        provision_state=provision_state, token=token,
                        token_pregenerated=token is not None)
        with self.cond:
            self.nodes[entry.uuid] = entry
        return entry

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StandinController:
        # a short poll interval keeps stop() quick; tests start many of these
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="standin-controller")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset_agent(self, node_uuid: str) -> None:
        """Forget the agent the way Ironic does at power off / end of deploy."""
        with self.cond:
            node = self.nodes[node_uuid]
            node.agent_url = node.agent_verify_ca = None
            if not node.token_pregenerated:
                node.token = None

    # -- waiting (tests) -------------------------------------------------------------
    def heartbeats(self, node_uuid: str | None = None, accepted: bool | None = None
                   ) -> list[dict[str, Any]]:
        with self.cond:
            return [r for r in self.requests if r["kind"] == "heartbeat"
                    and (node_uuid is None or r["path"].endswith(node_uuid))
                    and (accepted is None or (r["status"] == 202) == accepted)]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("stand-in controller: condition not met in "
                                       f"{timeout:.0f}s; requests so far: "
                                       f"{[(r['kind'], r['status']) for r in self.requests]}")
                self.cond.wait(min(remaining, 0.5))

    def wait_for_heartbeats(self, node_uuid: str, count: int = 1,
                            timeout: float = 30.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            beats = self.heartbeats(node_uuid, accepted=True)
            return beats if len(beats) >= count else None
        return self.wait_for(enough, timeout)

    # -- HTTP ------------------------------------------------------------------------
    def _record(self, kind: str, status: int, body: Any = None) -> None:
        entry = {"kind": kind, "method": request.method, "path": request.path,
                 "args": request.args.to_dict(), "status": status, "time": time.time(),
                 "json": request.get_json(silent=True),
                 "headers": {k: request.headers.get(k) for k in (
                     "X-OpenStack-Ironic-API-Version", "X-OpenStack-Request-ID", "Accept",
                     "Content-Type") if request.headers.get(k) is not None},
                 "response": body}
        with self.cond:
            self.requests.append(entry)
            self.cond.notify_all()

    def _error(self, kind: str, status: int, text: str) -> Response:
        fault = {"faultcode": "Client" if status < 500 else "Server", "faultstring": text,
                 "debuginfo": None}
        body = {"error_message": json.dumps(fault)}
        self._record(kind, status, body)
        return Response(json.dumps(body), status=status, mimetype="application/json")

    def _ok(self, kind: str, status: int, body: Any) -> Response:
        self._record(kind, status, body)
        text = "" if body is None else json.dumps(body)
        return Response(text, status=status, mimetype="application/json")

    def _requested_version(self, kind: str) -> tuple[int, int] | Response:
        try:
            wanted = _version(request.headers.get("X-OpenStack-Ironic-API-Version"))
        except ValueError:
            return self._error(kind, 400, "Invalid value for X-OpenStack-Ironic-API-Version")
        if wanted == (99, 99):
            return _version(self.version)
        if wanted > _version(self.version):
            return self._error(kind, 406, f"Version {wanted[0]}.{wanted[1]} was requested but "
                               f"the minor version is not supported by this service. The "
                               f"supported version range is: [1.1, {self.version}].")
        return wanted

    def _build_app(self) -> Flask:
        app = Flask("standin")

        @app.get("/")
        def root() -> Response:
            v1 = {"id": "v1", "status": "CURRENT", "min_version": "1.1",
                  "version": self.version,
                  "links": [{"href": f"{request.host_url}v1/", "rel": "self"}]}
            return self._ok("root", 200, {"name": "OpenStack Ironic API (deploy-agent stand-in)",
                                          "description": "deploy-agent's stand-in controller",
                                          "versions": [v1], "default_version": v1})

        @app.get("/v1/lookup")
        def lookup() -> Response:
            return self._lookup()

        @app.post("/v1/heartbeat/<node_uuid>")
        def heartbeat(node_uuid: str) -> Response:
            return self._heartbeat(node_uuid)

        @app.get("/standin/nodes/<node_uuid>")
        def node_info(node_uuid: str) -> Response:
            with self.cond:
                node = self.nodes.get(node_uuid)
                info = node.agent_info() if node else None
            if info is None:
                return self._error("standin", 404, f"Node {node_uuid} could not be found.")
            return self._ok("standin", 200, info)

        @app.post("/standin/nodes/<node_uuid>/reset")
        def node_reset(node_uuid: str) -> Response:
            if node_uuid not in self.nodes:
                return self._error("standin", 404, f"Node {node_uuid} could not be found.")
            self.reset_agent(node_uuid)
            return self._ok("standin", 200, {"reset": node_uuid})

        return app

    def _lookup(self) -> Response:
        version = self._requested_version("lookup")
        if isinstance(version, Response):
            return version
        if version < (1, 22):
            return self._error("lookup", 404, "The resource could not be found.")
        if self.lookup_statuses:
            status = self.lookup_statuses.pop(0)
            return self._error("lookup", status, f"scripted HTTP {status}")
        addresses = [a.strip().lower() for a in request.args.get("addresses", "").split(",")
                     if a.strip()]
        valid = [a for a in addresses if MAC.match(a)]
        wanted_uuid = request.args.get("node_uuid")
        if not valid and not wanted_uuid:
            return self._error("lookup", 400, "Incorrect MAC address format or no MAC "
                               "addresses and no node UUID provided")
        with self.cond:
            if wanted_uuid:
                node = self.nodes.get(wanted_uuid)
            else:
                node = next((n for n in self.nodes.values()
                             if n.macs is None or set(n.macs) & set(valid)), None)
            if node is None or node.provision_state not in LOOKUP_STATES:
                node = None
            else:
                config = dict(self.config)
                if version >= (1, 62):
                    if node.token is None:
                        node.token = secrets.token_urlsafe(32)
                        config["agent_token"] = node.token
                    else:
                        config["agent_token"] = MASK
                body = {"node": node.public(), "config": config}
        if node is None:
            return self._error("lookup", 404, "Node with addresses "
                               f"{','.join(valid)} could not be found.")
        return self._ok("lookup", 200, body)

    def _heartbeat(self, node_uuid: str) -> Response:
        version = self._requested_version("heartbeat")
        if isinstance(version, Response):
            return version
        if version < (1, 22):
            return self._error("heartbeat", 404, "The resource could not be found.")
        if self.heartbeat_statuses:
            status = self.heartbeat_statuses.pop(0)
            return self._error("heartbeat", status, f"scripted HTTP {status}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return self._error("heartbeat", 400, "Invalid JSON body")
        if "agent_version" in body and version < (1, 36):
            return self._error("heartbeat", 400, 'Field "agent_version" not recognised')
        if "agent_verify_ca" in body and version < (1, 68):
            return self._error("heartbeat", 400,
                               'Field "agent_verify_ca" not recognised in this version')
        callback = body.get("callback_url")
        parsed = urllib.parse.urlsplit(callback) if isinstance(callback, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            return self._error("heartbeat", 400,
                               'An issue with the supplied "callback_url" has been detected.')
        if self.require_tls and parsed.scheme != "https":
            return self._error("heartbeat", 400, "TLS is required by configuration")
        with self.cond:
            node = self.nodes.get(node_uuid)
            if node is None:
                error = (404, f"Node {node_uuid} could not be found.")
            elif version >= (1, 36) and not body.get("agent_version"):
                error = (400, "Agent did not transmit a version, and a version is required. "
                              "Please update the agent being used.")
            elif not body.get("agent_token"):
                error = (400, "Agent token is required for heartbeat processing.")
            elif node.token is None or not secrets.compare_digest(
                    str(body["agent_token"]), node.token):
                error = (400, "Invalid or missing agent token received.")
            elif node.agent_url is not None and node.agent_url != callback:
                error = (400, 'Detected change in ramdisk provided "callback_url"')
            elif (node.agent_verify_ca is not None and body.get("agent_verify_ca")
                  and body["agent_verify_ca"] != node.agent_verify_ca):
                error = (400, 'Detected change in ramdisk provided "agent_verify_ca"')
            else:
                error = None
                node.agent_url = callback
                if body.get("agent_verify_ca"):
                    node.agent_verify_ca = body["agent_verify_ca"]
                node.agent_version = body.get("agent_version")
                node.heartbeats += 1
                node.last_heartbeat = time.time()
        if error:
            return self._error("heartbeat", *error)
        return self._ok("heartbeat", 202, None)
