"""Clean, deploy and service steps across managers (reference §4.1–4.3).

``get_steps`` gathers every manager's steps, keeping one entry per step name
(highest support level, then priority, then manager name).  ``execute_step``
runs a reported step on the manager that owns it and shapes the result or
the failure the way the conductor reads it.  The extensions stay thin and
only call these two functions.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from agent import errors
from agent.commands import VERSION_MISMATCH, StepOutcome
from agent.hardware import managers

LOG = logging.getLogger(__name__)

ERROR_TYPES: dict[str, type[errors.AgentError]] = {
    "clean": errors.CleaningError, "deploy": errors.DeploymentError,
    "service": errors.ServicingError,
}


def _collect(state: Any, step_type: str, node: Any, ports: Any
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


def get_steps(state: Any, step_type: str, node: Any = None, ports: Any = None
              ) -> dict[str, Any]:
    """The ``get_<type>_steps`` result: both keys the conductor requires."""
    state.refresh_node(node, ports)
    by_manager, _ = _collect(state, step_type, state.node, state.ports)
    return {f"{step_type}_steps": by_manager,
            "hardware_manager_version": managers.versions(state)}


def _call_kwargs(fn: Any, args: dict[str, Any], ctx: Any, step_type: str,
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


def execute_step(state: Any, ctx: Any, step_type: str, step: Any, node: Any = None,
                 ports: Any = None, version: Any = None) -> Any:
    """Run one step; returns the result object, or a StepOutcome for a mismatch."""
    error_cls = ERROR_TYPES[step_type]
    state.refresh_node(node, ports)
    current = managers.versions(state)
    if version is not None and version != current:
        mismatch = errors.VersionMismatch(
            f"Current versions: {current}, versions used by ironic: {version}")
        LOG.warning("%s step refused: %s", step_type, mismatch.details)
        return StepOutcome(status=VERSION_MISMATCH, result=None, error=mismatch.to_dict())
    if not isinstance(step, dict) or not step.get("step"):
        raise error_cls(f"Malformed {step_type} step, no 'step' key: {step!r}")
    name = step["step"]
    args = step.get("args") or {}
    if not isinstance(args, dict):
        raise error_cls(f"{step_type} step {name}: 'args' must be an object, got {args!r}")
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
