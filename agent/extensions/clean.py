"""The ``clean`` extension: list clean steps and run one (reference §4.1–4.3).

Parameter types are checked inside the request (a wrong type is a 400);
everything else — the version check, a step without a name, the step itself
— runs in the worker and ends as the command's status, as the conductor
expects.
"""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, command
from agent.errors import InvalidCommandParamsError
from agent.extensions import Extension
from agent.hardware import steps


def _check_common(params: dict[str, Any]) -> dict[str, Any]:
    node, ports = params.get("node"), params.get("ports")
    if node is not None and not isinstance(node, dict):
        raise InvalidCommandParamsError(f"'node' must be an object, got {type(node).__name__}")
    if ports is not None and not isinstance(ports, list):
        raise InvalidCommandParamsError(f"'ports' must be a list, got {type(ports).__name__}")
    return {"node": node, "ports": ports}


def validate_get_steps(params: dict[str, Any]) -> dict[str, Any]:
    return _check_common(params)


def validate_execute_step(params: dict[str, Any]) -> dict[str, Any]:
    kwargs = _check_common(params)
    if "step" not in params:
        raise InvalidCommandParamsError("missing required parameter 'step'")
    if not isinstance(params["step"], dict):
        raise InvalidCommandParamsError(
            f"'step' must be an object, got {type(params['step']).__name__}")
    version = params.get("clean_version")
    if version is not None and not isinstance(version, dict):
        raise InvalidCommandParamsError(
            f"'clean_version' must be an object or null, got {type(version).__name__}")
    return dict(kwargs, step=params["step"], clean_version=version)


class CleanExtension(Extension):
    name = "clean"

    @command(validator=validate_get_steps)
    def get_clean_steps(self, ctx: CommandContext, node: Any = None,
                        ports: Any = None) -> dict[str, Any]:
        return steps.get_steps(self.state, "clean", node, ports)

    @command(is_async=True, validator=validate_execute_step)
    def execute_clean_step(self, ctx: CommandContext, step: dict[str, Any], node: Any = None,
                           ports: Any = None, clean_version: Any = None) -> Any:
        return steps.execute_step(self.state, ctx, "clean", step, node, ports, clean_version)
