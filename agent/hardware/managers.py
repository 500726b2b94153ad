"""Hardware-manager plugins: loading, ordering, dispatch and device filtering.

Managers are classes registered under the ``deploy_agent.hardware_managers``
entry-point group.  Each reports a support level for this machine; managers
that report none are dropped and the rest are ordered most specific first.
``dispatch`` calls the first manager that implements a method, so a vendor
manager can override one thing and leave the rest to the generic one;
``dispatch_all`` asks every manager that implements a method and collects the
answers by manager name.  Every manager may also narrow the disk list through
``filter_devices``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, ClassVar

from agent.config import Config
from agent.errors import IncompatibleHardwareMethodError
from agent.state import AgentState

LOG = logging.getLogger(__name__)
GROUP = "deploy_agent.hardware_managers"


class SupportLevel(enum.IntEnum):
    NONE = 0
    GENERIC = 1
    MAINLINE = 2
    SERVICE_PROVIDER = 3


class HardwareManager:
    """Base class.  Subclasses add step methods and optional hooks.

    Optional hooks (looked up by name, so a manager implements only what it
    needs): ``list_block_devices()``, ``filter_devices(disks)``,
    ``list_hardware_info()``, ``get_os_install_device(node)``,
    ``get_clean_steps(node, ports)``, ``get_deploy_steps(node, ports)``,
    ``get_service_steps(node, ports)``.  A step method is called as
    ``method(node, ports, **args)`` and also receives ``ctx=`` (progress,
    cancellation) when it declares that parameter.  Raising
    IncompatibleHardwareMethodError hands the call to the next manager.
    """

    NAME: ClassVar[str] = ""
    VERSION: ClassVar[str] = "1.0"

    def __init__(self, state: AgentState) -> None:
        self.state = state
        # an int, not only SupportLevel: plugins may rank themselves above the named levels
        self.support_level: int = SupportLevel.NONE

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def name(self) -> str:
        return self.NAME or type(self).__name__

    def evaluate_hardware_support(self) -> int:
        return SupportLevel.NONE


def _discover() -> list[type[HardwareManager]]:
    classes: list[type[HardwareManager]] = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the agent
            LOG.error("hardware manager %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, HardwareManager)):
            LOG.error("hardware manager %s (%s) is not a HardwareManager subclass; ignored",
                      ep.name, ep.value)
            continue
        if cls not in classes:
            classes.append(cls)
    if not classes:
        # the generic manager comes through the same entry points as any plugin
        LOG.error("no hardware manager is registered under %s: is the package installed?",
                  GROUP)
    return classes


def get_managers(state: AgentState, *, refresh: bool = False) -> list[HardwareManager]:
    """Supported managers for this machine, most specific first (cached on ``state``)."""
    with state.lock:
        cached = state.hardware_managers
        if cached is not None and not refresh:
            return cached
        found = []
        for cls in _discover():
            manager = cls(state)
            try:
                level = int(manager.evaluate_hardware_support())
            except Exception as exc:  # noqa: BLE001 - one plugin's probe must not stop the rest
                LOG.error("hardware manager %s could not evaluate support: %s", cls.__name__, exc)
                continue
            if level <= SupportLevel.NONE:
                LOG.info("hardware manager %s does not support this machine", manager.name)
                continue
            manager.support_level = level
            found.append(manager)
        found.sort(key=lambda m: (-m.support_level, m.name))
        LOG.info("hardware managers: %s", ", ".join(
            f"{m.name} (support {m.support_level})" for m in found))
        state.hardware_managers = found
        return found


def _method(manager: HardwareManager, name: str) -> Callable[..., Any] | None:
    if name.startswith("_"):
        return None
    fn = getattr(manager, name, None)
    return fn if callable(fn) else None


def dispatch(state: AgentState, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` on the first manager that implements it."""
    for manager in get_managers(state):
        fn = _method(manager, method)
        if fn is None:
            continue
        try:
            return fn(*args, **kwargs)
        except IncompatibleHardwareMethodError:
            LOG.debug("%s declined %s; trying the next manager", manager.name, method)
    raise IncompatibleHardwareMethodError(
        f"no hardware manager implements {method} "
        f"(loaded: {', '.join(m.name for m in get_managers(state)) or 'none'})")


def dispatch_all(state: AgentState, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``{manager name: result}`` from every manager implementing ``method``."""
    results = {}
    for manager in get_managers(state):
        fn = _method(manager, method)
        if fn is None:
            continue
        try:
            results[manager.name] = fn(*args, **kwargs)
        except IncompatibleHardwareMethodError:
            continue
    return results


def list_disks(state: AgentState) -> list[Any]:
    """The disks every part of the agent sees, after all managers' filters."""
    disks = dispatch(state, "list_block_devices")
    for manager in get_managers(state):
        fn = _method(manager, "filter_devices")
        if fn is not None:
            before = len(disks)
            disks = list(fn(disks))
            if len(disks) != before:
                LOG.debug("%s filtered the disk list from %d to %d", manager.name, before,
                          len(disks))
    return disks


def versions(state: AgentState) -> dict[str, str]:
    """``hardware_manager_version``: constant for the life of the process."""
    return {m.name: m.VERSION for m in get_managers(state)}
