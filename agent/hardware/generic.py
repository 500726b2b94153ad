"""The generic hardware manager: inventory, install disk, and the erase, pstore,
burn-in and software RAID steps.

It supports every machine at the lowest level, so vendor managers loaded
through the entry-point group take precedence for anything they implement.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.context import CommandContext
from agent.errors import CleaningError, DeploymentError
from agent.hardware import burnin, disks, hints, managers, pstore
from agent.hardware.erase_base import EraseOptions, options_from_node
from agent.hardware.raid import steps as raid_steps

LOG = logging.getLogger(__name__)


def _step(name: str, priority: int, *, abortable: bool = True) -> dict[str, Any]:
    return {"step": name, "priority": priority, "interface": "deploy",
            "reboot_requested": False, "abortable": abortable}


class GenericHardwareManager(managers.HardwareManager):
    NAME = "generic_hardware_manager"
    # bump whenever the step set or a priority changes (reference §4.3)
    VERSION = "1.2"

    def evaluate_hardware_support(self) -> int:
        return managers.SupportLevel.GENERIC

    # -- discovery ------------------------------------------------------------------
    def list_block_devices(self) -> list[disks.Disk]:
        return disks.list_disks(include_loop=self.config.include_loop_devices)

    def list_hardware_info(self) -> dict[str, Any]:
        from agent.hardware import inventory  # only inspection needs it; deploys stay lean
        cache = None
        if self.config.collect_lldp:
            from agent.hardware import lldp
            # one capture per manager, i.e. per agent process (managers are cached)
            cache = self.__dict__.setdefault("_lldp_cache", lldp.CaptureCache())
        return inventory.collect(self.config, lldp_cache=cache,
                                 disk_lister=lambda: managers.list_disks(self.state))

    def get_os_install_device(self, node: Any = None) -> tuple[disks.Disk, str]:
        node = node if node is not None else self.state.node
        return hints.select_root_device(managers.list_disks(self.state),
                                        hints.hints_from_node(node),
                                        hints.skip_list_from_node(node))

    # -- steps ----------------------------------------------------------------------
    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [_step("erase_devices_metadata", 99), _step("erase_devices", 10),
                _step("erase_devices_express", 0), *pstore.CLEAN_STEPS,
                *burnin.CLEAN_STEPS, *raid_steps.clean_steps()]

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        step = _step("erase_devices_metadata", 0)
        del step["abortable"]
        # deploy steps are never aborted: IPA's carry no abortable flag
        burnins = [{k: v for k, v in s.items() if k != "abortable"} for s in burnin.DEPLOY_STEPS]
        return [step, *burnins, *raid_steps.deploy_steps()]

    def get_service_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [*burnin.SERVICE_STEPS, *raid_steps.service_steps()]

    def _options(self, node: Any) -> EraseOptions:
        # the node's agent_enable_discard_erase / wipe_special_filesystems win over the ramdisk's
        return options_from_node(node, discard=self.config.enable_discard_erase,
                                 guard_shared=self.config.guard_special_filesystems)

    def erase_devices_metadata(self, node: Any, ports: Any,
                               ctx: CommandContext | None = None) -> dict[str, Any]:
        from agent.hardware import erase  # loaded by the erase steps, not by their listing

        options = self._options(node)
        return erase.erase_devices_metadata(
            managers.list_disks(self.state), node, options, ctx,
            guard_shared=options.guard_shared)

    def erase_devices(self, node: Any, ports: Any,
                      ctx: CommandContext | None = None) -> dict[str, Any]:
        from agent.hardware import erase

        options = self._options(node)
        return erase.erase_devices(
            managers.list_disks(self.state), node, options, ctx,
            guard_shared=options.guard_shared)

    def erase_devices_express(self, node: Any, ports: Any,
                              ctx: CommandContext | None = None) -> dict[str, Any]:
        from agent.hardware import erase

        options = self._options(node)
        return erase.erase_devices_express(
            managers.list_disks(self.state), node, options, ctx,
            guard_shared=options.guard_shared)

    # -- burn-in (stress-ng, fio) ------------------------------------------------------
    def burnin_cpu(self, node: Any, ports: Any,
                   ctx: CommandContext | None = None) -> dict[str, Any]:
        return burnin.burnin_cpu(node, ports, ctx)

    def burnin_memory(self, node: Any, ports: Any,
                      ctx: CommandContext | None = None) -> dict[str, Any]:
        return burnin.burnin_memory(node, ports, ctx)

    def burnin_disk(self, node: Any, ports: Any,
                    ctx: CommandContext | None = None) -> dict[str, Any]:
        return burnin.burnin_disk(node, ports, ctx, disks=managers.list_disks(self.state),
                                  guard_shared=self.config.guard_special_filesystems)

    def burnin_network(self, node: Any, ports: Any,
                       ctx: CommandContext | None = None) -> dict[str, Any]:
        return burnin.burnin_network(node, ports, ctx)

    def erase_pstore(self, node: Any, ports: Any,
                     ctx: CommandContext | None = None) -> dict[str, Any]:
        return pstore.erase_pstore(node, ports, ctx)

    # -- software RAID (interface "raid") --------------------------------------------
    def create_configuration(self, node: Any, ports: Any, create_root_volume: Any = True,
                             create_nonroot_volumes: Any = True,
                             ctx: CommandContext | None = None) -> dict[str, Any]:
        raid_config = raid_steps.target_config(node, create_root_volume,
                                               create_nonroot_volumes)
        return raid_steps.create(
            managers.list_disks(self.state), node, raid_config, ctx, delete_existing=False,
            guard_shared=self.config.guard_special_filesystems,
            error_cls=raid_steps.error_class(node, CleaningError))

    def apply_configuration(self, node: Any, ports: Any, raid_config: Any,
                            delete_existing: Any = True,
                            ctx: CommandContext | None = None) -> dict[str, Any]:
        return raid_steps.create(
            managers.list_disks(self.state), node, raid_config, ctx,
            delete_existing=raid_steps.flag("delete_existing", delete_existing),
            guard_shared=self.config.guard_special_filesystems,
            error_cls=raid_steps.error_class(node, DeploymentError))

    def delete_configuration(self, node: Any, ports: Any,
                             ctx: CommandContext | None = None) -> dict[str, Any]:
        return raid_steps.delete(
            managers.list_disks(self.state), node, ctx,
            guard_shared=self.config.guard_special_filesystems,
            error_cls=raid_steps.error_class(node, CleaningError))
