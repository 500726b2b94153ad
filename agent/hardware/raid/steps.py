"""The ``raid`` interface steps, as Ironic 39's ``AgentRAID`` calls them.

- clean: ``delete_configuration`` and ``create_configuration`` (priority 0:
  only on request; not abortable, a half-partitioned member is worse than a
  finished one);
- deploy: ``apply_configuration`` (``raid_config``, ``delete_existing``
  defaulting to true);
- service: all three, as IPA offers them.

``create_configuration`` reads Ironic's filtered copy
(``driver_internal_info.target_raid_config``, written by
``AgentRAID.create_configuration``) when present, else the node's
``target_raid_config``, and filters it again by ``create_root_volume`` and
``create_nonroot_volumes`` the way ``ironic.common.raid`` does (idempotent on
the copy).  Only ``controller: software`` logical disks are built here.  A
configuration without any is refused with a clear error: the step's owner is
the highest-ranked manager offering it, so a vendor manager that builds
hardware RAID would have been asked instead of this one (IPA returns an empty
result, which Ironic then fails with a message that does not say why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.context import CommandContext
from agent.errors import (
    AgentError,
    CleaningError,
    DeploymentError,
    InvalidCommandParamsError,
    ServicingError,
)
from agent.hardware.disks import Disk

CREATE_ARGSINFO = {
    "create_root_volume": {
        "description": "Create the root volume (the logical disk with is_root_volume). "
                       "Default true.",
        "required": False},
    "create_nonroot_volumes": {
        "description": "Create the logical disks that are not the root volume. Default true.",
        "required": False},
}
APPLY_ARGSINFO = {
    "raid_config": {"description": "The RAID configuration to apply.", "required": True},
    "delete_existing": {
        "description": "Delete the existing software RAID configuration first. Default true.",
        "required": False},
}


def _step(name: str, argsinfo: Mapping[str, Any] | None = None, *,
          abortable: bool | None = False) -> dict[str, Any]:
    step: dict[str, Any] = {"step": name, "priority": 0, "interface": "raid",
                            "reboot_requested": False}
    if abortable is not None:
        step["abortable"] = abortable
    if argsinfo:
        step["argsinfo"] = {k: dict(v) for k, v in argsinfo.items()}
    return step


def clean_steps() -> list[dict[str, Any]]:
    return [_step("delete_configuration"), _step("create_configuration", CREATE_ARGSINFO)]


def deploy_steps() -> list[dict[str, Any]]:
    return [_step("apply_configuration", APPLY_ARGSINFO, abortable=None)]


def service_steps() -> list[dict[str, Any]]:
    return [_step("apply_configuration", APPLY_ARGSINFO), _step("delete_configuration"),
            _step("create_configuration", CREATE_ARGSINFO)]


def error_class(node: Any, default: type[AgentError]) -> type[AgentError]:
    """The step error type for the provision state the node is in."""
    state = str((node or {}).get("provision_state") or "") if isinstance(node, Mapping) else ""
    if "clean" in state:
        return CleaningError
    if "servic" in state:
        return ServicingError
    if "deploy" in state or state == "wait call-back":
        return DeploymentError
    return default


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InvalidCommandParamsError(f"{name} must be true or false")


def target_config(node: Any, create_root_volume: Any = True,
                  create_nonroot_volumes: Any = True) -> dict[str, Any]:
    """The configuration create_configuration builds, filtered as Ironic filters it."""
    node = node if isinstance(node, Mapping) else {}
    internal = (node.get("driver_internal_info") or {}).get("target_raid_config")
    source = internal if internal else node.get("target_raid_config")
    if not source:
        raise InvalidCommandParamsError("the node has no target_raid_config")
    if not isinstance(source, Mapping) or not isinstance(source.get("logical_disks"), list):
        raise InvalidCommandParamsError("the node's target_raid_config has no logical_disks "
                                        "list")
    root, nonroot = (flag("create_root_volume", create_root_volume),
                     flag("create_nonroot_volumes", create_nonroot_volumes))
    lds = list(source["logical_disks"])
    skipped = []
    if not root:
        lds = [ld for ld in lds if not (isinstance(ld, Mapping) and ld.get("is_root_volume"))]
        skipped.append("skipping the root volume")
    if not nonroot:
        lds = [ld for ld in lds if isinstance(ld, Mapping) and ld.get("is_root_volume")]
        skipped.append("skipping non-root volumes")
    if not lds:
        raise InvalidCommandParamsError("the node's target_raid_config is empty"
                                        + (f" after {' and '.join(skipped)}" if skipped else ""))
    return {**source, "logical_disks": lds}


def _software_only(raid_config: Any) -> None:
    from agent.hardware.raid import config

    if not config.software_requested(raid_config):
        raise InvalidCommandParamsError(
            "no logical disk asks for controller \"software\"; this agent builds software "
            "RAID only, and no hardware manager for a RAID controller is loaded")


def create(disks: Sequence[Disk], node: Any, raid_config: Any, ctx: CommandContext | None, *,
           delete_existing: bool, guard_shared: bool, error_cls: type[AgentError]
           ) -> dict[str, Any]:
    # the RAID machinery loads when a RAID step runs, not when steps are listed
    from agent.hardware.raid import apply

    _software_only(raid_config)
    prepared = apply.prepare(disks, node, raid_config, delete_existing=delete_existing,
                             guard_shared=guard_shared)
    return apply.run(prepared, ctx, error_cls=error_cls)


def delete(disks: Sequence[Disk], node: Any, ctx: CommandContext | None, *,
           guard_shared: bool, error_cls: type[AgentError]) -> dict[str, Any]:
    from agent.hardware.raid import pool, teardown

    found = pool.build(disks, node, with_members=True)
    plan = teardown.prepare(found, guard_shared=guard_shared)
    return teardown.run(plan, ctx, error_cls=error_cls)
