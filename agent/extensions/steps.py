"""Clean, deploy and service steps: the three step extensions and what they share.

The conductor calls ``<type>.get_<type>_steps`` and ``<type>.execute_<type>_step``
(docs/agent-api.md §4.1–4.3).  ``get_steps`` gathers every hardware manager's
steps, keeping one entry per step name (highest support level, then priority,
then manager name).  ``execute_step`` runs a reported step on the manager that
owns it and shapes the result or the failure the way the conductor reads it.

Types are checked inside the request (a wrong type is a 400); everything
else, from the version check to the step itself, runs in the worker and ends
as the command's status, as the conductor expects (§4.2).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from agent import errors
from agent.commands import VERSION_MISMATCH, CommandContext, StepOutcome, command
from agent.errors import InvalidCommandParamsError
from agent.extensions import Extension
from agent.hardware import managers
from agent.state import AgentState

LOG = logging.getLogger(__name__)

ERROR_TYPES: dict[str, type[errors.AgentError]] = {
    "clean": errors.CleaningError, "deploy": errors.DeploymentError,
    "service": errors.ServicingError,
}


def _collect(state: AgentState, step_type: str, node: Any, ports: Any
             ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, managers.HardwareManager]]:
    """Steps by manager class name, de-duplicated, and step name → owning manager."""
    offered: list[tuple[managers.HardwareManager, dict[str, Any]]] = []
    for manager in managers.get_managers(state):
        fn = getattr(manager, f"get_{step_type}_steps", None)
        if fn is None:
            continue
        try:
            steps = fn(node, ports) or []
        except errors.IncompatibleHardwareMethodError:
            continue
        for step in steps:
            offered.append((manager, dict(step)))
    owner: dict[str, tuple[managers.HardwareManager, dict[str, Any]]] = {}
    for manager, step in offered:
        best = owner.get(step["step"])
        key = (manager.support_level, step.get("priority", 0))
        if best is None or key > (best[0].support_level, best[1].get("priority", 0)) or (
                key == (best[0].support_level, best[1].get("priority", 0))
                and manager.name < best[0].name):
            owner[step["step"]] = (manager, step)
    by_manager: dict[str, list[dict[str, Any]]] = {}
    for manager, step in owner.values():
        by_manager.setdefault(type(manager).__name__, []).append(step)
    return by_manager, {name: m for name, (m, _) in owner.items()}


def get_steps(state: AgentState, step_type: str, node: Any = None, ports: Any = None
              ) -> dict[str, Any]:
    """The ``get_<type>_steps`` result: both keys the conductor requires."""
    state.refresh_node(node, ports)
    by_manager, _ = _collect(state, step_type, state.node, state.ports)
    return {f"{step_type}_steps": by_manager,
            "hardware_manager_version": managers.versions(state)}


def _call_kwargs(fn: Any, args: dict[str, Any], ctx: CommandContext | None, step_type: str,
                 name: str) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(args) - set(params)) if not takes_any else []
    if unknown:
        raise ERROR_TYPES[step_type](f"{step_type} step {name} does not accept argument(s) "
                                     f"{', '.join(unknown)}")
    kwargs = dict(args)
    if "ctx" in params:
        kwargs["ctx"] = ctx
    return kwargs


def execute_step(state: AgentState, ctx: CommandContext | None, step_type: str, step: Any,
                 node: Any = None, ports: Any = None, version: Any = None) -> Any:
    """Run one step; returns the result object, or a StepOutcome for a mismatch."""
    error_cls = ERROR_TYPES[step_type]
    state.refresh_node(node, ports)
    current = managers.versions(state)
    if version is not None and version != current:
        mismatch = errors.VersionMismatch(
            f"Current versions: {current}, versions used by ironic: {version}")
        LOG.warning("%s step refused: %s", step_type, mismatch.details)
        return StepOutcome(status=VERSION_MISMATCH, result=None, error=mismatch.to_dict())
    # the request validator (below) already checked the step's shape
    name = step["step"]
    args = step.get("args") or {}
    _, owners = _collect(state, step_type, state.node, state.ports)
    manager = owners.get(name)
    if manager is None:
        raise error_cls(f"{step_type} step {name} is not offered by this agent; "
                        f"offered: {', '.join(sorted(owners)) or 'none'}")
    fn = getattr(manager, name, None)
    if not callable(fn):
        raise error_cls(f"hardware manager {manager.name} offers {step_type} step {name} "
                        "but does not implement it")
    kwargs = _call_kwargs(fn, args, ctx, step_type, name)
    LOG.info("running %s step %s on %s with args %s", step_type, name, manager.name,
             sorted(args))
    try:
        result = fn(state.node, state.ports, **kwargs)
    except errors.AgentError:
        # a specific type (InvalidCommandParamsError 400, ImageChecksumError, ...)
        # tells the operator more than the generic step error would (§4.2)
        raise
    except Exception as exc:
        LOG.exception("%s step %s raised", step_type, name)
        raise error_cls(f"Unexpected exception performing {step_type} step {name}. "
                        f"{type(exc).__name__}: {exc}") from exc
    LOG.info("%s step %s finished", step_type, name)
    return {f"{step_type}_result": result, f"{step_type}_step": copy.deepcopy(step)}


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
        return dict(kwargs, step=params["step"], version=version)
    return validate


class StepExtension(Extension):
    """The extension of one step type; ``step_extension`` makes one per type."""

    step_type: ClassVar[str]


def step_extension(step_type: str) -> type[StepExtension]:
    """The extension class for ``step_type``, with the command names Ironic calls."""
    def list_steps(self: StepExtension, ctx: CommandContext, node: Any = None,
                   ports: Any = None) -> dict[str, Any]:
        return get_steps(self.state, step_type, node, ports)

    def run_step(self: StepExtension, ctx: CommandContext, step: dict[str, Any],
                 node: Any = None, ports: Any = None, version: Any = None) -> Any:
        return execute_step(self.state, ctx, step_type, step, node, ports, version)

    listing = f"get_{step_type}_steps"
    running = f"execute_{step_type}_step"
    return type(f"{step_type.capitalize()}Extension", (StepExtension,), {
        "name": step_type, "step_type": step_type, "__module__": __name__,
        listing: command(listing, validator=get_steps_validator())(list_steps),
        running: command(running, is_async=True,
                         validator=execute_step_validator(step_type))(run_step),
    })


CleanExtension = step_extension("clean")
DeployExtension = step_extension("deploy")
ServiceExtension = step_extension("service")
