"""HTTP in, JSON out: Ironic's agent API v1 as a Flask application factory.

No business logic here and no module state: ``create_app(state, runner)``
builds an independent app, so tests can run many agents in one process.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from agent import __version__, errors
from agent.commands import CommandRunner
from agent.state import AgentState

LOG = logging.getLogger(__name__)
MEDIA_TYPE = "application/vnd.openstack.ironic-python-agent.v1+json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def fault(status: int, faultstring: str) -> Response:
    return _json({"faultcode": "Client" if status < 500 else "Server",
                  "faultstring": faultstring}, status)


def create_app(state: AgentState, runner: CommandRunner) -> Flask:
    app = Flask("deploy_agent")
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_request_bytes
    app.url_map.strict_slashes = False

    def token_ok() -> bool:
        expected = state.config.agent_token
        if expected is None:
            # no controller hands out a token in standalone mode; without an
            # explicit --token the API is open there, and closed otherwise
            return bool(state.config.standalone)
        given = request.args.get("agent_token")
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())

    def require_token() -> Response | None:
        if not token_ok():
            return fault(401, "401 Unauthorized: Token invalid.")
        return None

    def wait_flag() -> bool:
        return request.args.get("wait", "false").lower() == "true"

    def root_url() -> str:
        return request.host_url.rstrip("/")

    def v1_descriptor() -> dict[str, Any]:
        base = root_url()
        return {"id": "v1",
                "links": [{"href": f"{base}/v1/", "rel": "self"}],
                "commands": [{"href": f"{base}/v1/commands/", "rel": "self"},
                             {"href": f"{base}/v1/commands/", "rel": "bookmark"}],
                "status": [{"href": f"{base}/v1/status", "rel": "self"},
                           {"href": f"{base}/v1/status", "rel": "bookmark"}],
                "media_types": [{"base": "application/json", "type": MEDIA_TYPE}]}

    @app.errorhandler(errors.AgentError)
    def agent_error(exc: errors.AgentError) -> Response:
        return fault(exc.code, exc.faultstring())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return fault(exc.code or 500, f"{exc.code} {exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        LOG.exception("unexpected API failure")
        return fault(500, f"Internal server error: {type(exc).__name__}: {exc}")

    @app.get("/")
    def root() -> Response:
        v1 = {"id": "v1", "links": [{"href": f"{root_url()}/v1/", "rel": "self"}]}
        return _json({"name": "OpenStack Ironic Python Agent API",
                      "description": "deploy-agent: Ironic agent API v1",
                      "versions": [v1], "default_version": v1})

    @app.get("/v1/")
    def v1() -> Response:
        return _json(v1_descriptor())

    @app.get("/v1/status")
    @app.get("/status")
    def status() -> Response:
        current = runner.current()
        return _json({"started_at": state.started_at, "version": __version__,
                      "busy": current.command_name if current else None,
                      "missing_tools": sorted(n for n, p in state.tool_report.items()
                                              if p is None)})

    @app.get("/v1/commands/")
    @app.get("/commands/")
    def list_commands() -> Response:
        denied = require_token()
        if denied:
            return denied
        results = runner.list_results()
        return _json({"commands": [r.to_dict(elide_large=True) for r in results]})

    @app.post("/v1/commands/")
    @app.post("/commands/")
    def post_command() -> Response:
        denied = require_token()
        if denied:
            return denied
        raw = request.get_data(cache=False)
        if request.content_length is None and len(raw) >= state.config.max_request_bytes:
            # a chunked body has no length to refuse up front, and werkzeug cuts
            # it at the limit without complaint: refuse it instead of parsing a stub
            raise RequestEntityTooLarge()
        try:
            body = json.loads(raw or b"")
        except ValueError as exc:
            return fault(400, f"400 Bad Request: Failed to decode JSON object: {exc}")
        if (not isinstance(body, dict) or not isinstance(body.get("name"), str)
                or not isinstance(body.get("params"), dict)):
            return fault(400, "400 Bad Request: Missing or invalid name or params")
        result = runner.execute(body["name"], body["params"], wait=wait_flag())
        return _json(result.to_dict())

    @app.get("/v1/commands/<command_id>")
    @app.get("/commands/<command_id>")
    def get_command(command_id: str) -> Response:
        denied = require_token()
        if denied:
            return denied
        result = runner.get(command_id)
        if wait_flag():
            result.done.wait()
        return _json(result.to_dict())

    @app.post("/v1/commands/<command_id>/cancel")
    def cancel_command(command_id: str) -> Response:
        denied = require_token()
        if denied:
            return denied
        result = runner.cancel(command_id)
        if wait_flag():
            result.done.wait()
        return _json(result.to_dict())

    return app
