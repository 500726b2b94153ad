"""Request-time checks shared by the clean, deploy and service step commands.

Types are checked inside the request (a wrong type is a 400); everything
else, from the version check to the step itself, runs in the worker and ends
as the command's status, as the conductor expects (reference §4.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.errors import InvalidCommandParamsError

Validator = Callable[[dict[str, Any]], dict[str, Any]]
MAX_NAME = 255


def _common(params: dict[str, Any]) -> dict[str, Any]:
    node, ports = params.get("node"), params.get("ports")
    if node is not None and not isinstance(node, dict):
        raise InvalidCommandParamsError(f"'node' must be an object, got {type(node).__name__}")
    if ports is not None and not isinstance(ports, list):
        raise InvalidCommandParamsError(f"'ports' must be a list, got {type(ports).__name__}")
    return {"node": node, "ports": ports}


def _check_step(step: Any) -> None:
    # the step runs in the worker, where a failure is stored and served with
    # every listing: anything that would be quoted there is bounded here
    if not isinstance(step, dict):
        raise InvalidCommandParamsError(f"'step' must be an object, got {type(step).__name__}")
    name = step.get("step")
    if not isinstance(name, str) or not name.isidentifier() or len(name) > MAX_NAME:
        raise InvalidCommandParamsError(
            f"'step' must name a step: an identifier of at most {MAX_NAME} characters")
    interface = step.get("interface")
    if interface is not None and (not isinstance(interface, str) or len(interface) > MAX_NAME):
        raise InvalidCommandParamsError(
            f"'interface' must be a string of at most {MAX_NAME} characters")
    args = step.get("args")
    if args is not None and not isinstance(args, dict):
        raise InvalidCommandParamsError(f"'args' must be an object, got {type(args).__name__}")
    if any(len(key) > MAX_NAME for key in args or {}):
        raise InvalidCommandParamsError(
            f"argument names must be at most {MAX_NAME} characters")


def get_steps_validator() -> Validator:
    return _common


def execute_step_validator(step_type: str) -> Validator:
    version_key = f"{step_type}_version"

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        kwargs = _common(params)
        if "step" not in params:
            raise InvalidCommandParamsError("missing required parameter 'step'")
        _check_step(params["step"])
        version = params.get(version_key)
        if version is not None and not isinstance(version, dict):
            raise InvalidCommandParamsError(
                f"'{version_key}' must be an object or null, got {type(version).__name__}")
        return dict(kwargs, step=params["step"], **{version_key: version})
    return validate
