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


def _common(params: dict[str, Any]) -> dict[str, Any]:
    node, ports = params.get("node"), params.get("ports")
    if node is not None and not isinstance(node, dict):
        raise InvalidCommandParamsError(f"'node' must be an object, got {type(node).__name__}")
    if ports is not None and not isinstance(ports, list):
        raise InvalidCommandParamsError(f"'ports' must be a list, got {type(ports).__name__}")
    return {"node": node, "ports": ports}


def get_steps_validator() -> Validator:
    return _common


def execute_step_validator(step_type: str) -> Validator:
    version_key = f"{step_type}_version"

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        kwargs = _common(params)
        if "step" not in params:
            raise InvalidCommandParamsError("missing required parameter 'step'")
        if not isinstance(params["step"], dict):
            raise InvalidCommandParamsError(
                f"'step' must be an object, got {type(params['step']).__name__}")
        version = params.get(version_key)
        if version is not None and not isinstance(version, dict):
            raise InvalidCommandParamsError(
                f"'{version_key}' must be an object or null, got {type(version).__name__}")
        return dict(kwargs, step=params["step"], **{version_key: version})
    return validate
