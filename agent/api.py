"""HTTP in, JSON out: Ironic's agent API v1 as a Flask application factory.

No business logic here and no module state: ``create_app(state, runner)``
builds an independent app, so tests can run many agents in one process.
"""

from __future__ import annotations

import ctypes
import hmac
import json
import logging
import traceback
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from agent import __version__, errors
from agent.commands import CommandRunner
from agent.state import AgentState

LOG = logging.getLogger(__name__)
MEDIA_TYPE = "application/vnd.openstack.ironic-python-agent.v1+json"
READ_SIZE = 1024 * 1024
TRIM_ABOVE = 4 * 1024 * 1024
# environ key the server sets to a callable telling whether the client hung up
PEER_CLOSED = "deploy_agent.peer_closed"
# the deepest real request (a RAID config inside node properties) is under 10
MAX_JSON_DEPTH = 64
MAX_JSON_ITEMS = 200_000


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def fault(status: int, faultstring: str) -> Response:
    return _json({"faultcode": "Client" if status < 500 else "Server",
                  "faultstring": errors.cap(faultstring)}, status)


def _trim_heap() -> None:
    # the thousands of small objects of a big parsed body are freed into glibc's
    # arenas, which keep them for the life of the process unless asked
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_body(limit: int) -> bytearray:
    """The request body in one buffer, refused as soon as it is known to exceed ``limit``.

    One exact-size buffer, filled in 1 MiB reads: reading through werkzeug
    left a 120 MiB body's copies in the heap for the life of the process.
    """
    stream = request.environ["wsgi.input"]
    length = request.content_length
    try:
        if length is not None:
            if length > limit:
                raise RequestEntityTooLarge()
            g.big_body = length > TRIM_ABOVE
            buf = bytearray(length)
            view = memoryview(buf)
            got = 0
            while got < length:
                chunk = stream.read(min(length - got, READ_SIZE))
                if not chunk:
                    raise errors.MalformedRequest("the body is shorter than its Content-Length")
                view[got:got + len(chunk)] = chunk
                got += len(chunk)
            return buf
        buf = bytearray()
        while chunk := stream.read(READ_SIZE):
            buf += chunk
            g.big_body = len(buf) > TRIM_ABOVE
            if len(buf) > limit:
                # a body without a length (chunked) is counted as it arrives
                raise RequestEntityTooLarge()
        return buf
    except TimeoutError:
        raise errors.RequestTimeout("the body did not arrive in time") from None


def parse_body(raw: bytearray) -> Any:
    """JSON with bounded nesting and element count, whatever the body's size."""
    # every container and element costs a Python object (56+ bytes for an empty
    # list): 90 MiB of "[]," would need gigabytes; base64 never contains these
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") > MAX_JSON_ITEMS:
        raise errors.MalformedRequest(f"the body has more than {MAX_JSON_ITEMS} JSON elements")
    too_deep = False
    try:
        body = json.loads(raw or b"")
    except RecursionError:
        too_deep = True
    except ValueError as exc:
        raise BadRequest(f"Failed to decode JSON object: {exc}") from None
    if too_deep or _depth(body) > MAX_JSON_DEPTH:
        raise errors.MalformedRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in
                             (item.values() if isinstance(item, dict) else item))
    return deepest


def create_app(state: AgentState, runner: CommandRunner) -> Flask:
    app = Flask("deploy_agent")
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_request_bytes
    app.url_map.strict_slashes = False

    def token_ok() -> bool:
        expected = state.config.agent_token
        if expected is None:
            # no controller hands out a token in standalone mode; without an
            # explicit --token the API is open there, and closed otherwise
            return state.config.standalone
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

    @app.after_request
    def release_big_body(response: Response) -> Response:
        if g.get("big_body"):
            response.call_on_close(_trim_heap)
        return response

    @app.errorhandler(errors.AgentError)
    def agent_error(exc: errors.AgentError) -> Response:
        return fault(exc.code, exc.faultstring())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return fault(exc.code or 500, f"{exc.code} {exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        LOG.error("unexpected API failure: %s: %s\n%s", type(exc).__name__,
                  errors.cap(str(exc), 200), "".join(traceback.format_tb(exc.__traceback__)))
        return fault(500, f"Internal server error: {type(exc).__name__}: "
                          f"{errors.cap(str(exc), 200)}")

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
        raw = read_body(state.config.max_request_bytes)
        body = parse_body(raw)
        del raw     # the parsed copy is all the command needs
        if (not isinstance(body, dict) or not isinstance(body.get("name"), str)
                or not isinstance(body.get("params"), dict)):
            return fault(400, "400 Bad Request: Missing or invalid name or params")
        result = runner.execute(body["name"], body["params"], wait=wait_flag(),
                                gone=request.environ.get(PEER_CLOSED))
        return _json(result.to_dict())

    @app.get("/v1/commands/<command_id>")
    @app.get("/commands/<command_id>")
    def get_command(command_id: str) -> Response:
        denied = require_token()
        if denied:
            return denied
        result = runner.get(command_id)
        if wait_flag():
            # a client that hung up must not keep its worker until the command ends
            result.wait(request.environ.get(PEER_CLOSED))
        return _json(result.to_dict())

    @app.post("/v1/commands/<command_id>/cancel")
    def cancel_command(command_id: str) -> Response:
        denied = require_token()
        if denied:
            return denied
        result = runner.cancel(command_id)
        if wait_flag():
            # a client that hung up must not keep its worker until the command ends
            result.wait(request.environ.get(PEER_CLOSED))
        return _json(result.to_dict())

    return app
