"""standby: image writes, partition UUIDs, sync and power."""

from __future__ import annotations

import logging
from typing import Any

from agent.commands import CommandContext, command
from agent.errors import InvalidCommandParamsError
from agent.extensions import Extension
from agent.hardware import power
from agent.imaging import image_info
from agent.imaging.steps import configdrive_for, flag, shaped

LOG = logging.getLogger(__name__)


class StandbyExtension(Extension):
    name = "standby"

    def validate_image(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = image_info.validate(params.get("image_info"),
                                   md5_allowed=self.config.md5_enabled)
        configdrive = configdrive_for(spec, params.get("configdrive"))
        node = params.get("node")
        if node is not None and not isinstance(node, dict):
            raise InvalidCommandParamsError("'node' must be an object")
        if node is not None:
            # additive: standalone callers pass root-device hints the way the
            # conductor's step calls do
            self.state.refresh_node(node)
        return {"spec": spec, "configdrive": configdrive,
                "force": flag(params, "force"),
                "verify_after_write": flag(params, "verify_after_write")
                or flag(spec.raw, "verify_after_write")}

    def run_prepare(self, ctx: CommandContext, spec: Any, configdrive: Any = None,
                    force: bool = False, verify_after_write: bool = False,
                    write_configdrive: bool = True) -> dict[str, Any]:
        # the image path (requests, decompressors, disk code) loads with the first write
        from agent.imaging import deploy

        outcome = deploy.prepare(self.state, spec, configdrive, progress=ctx.progress,
                                 cancel_check=ctx.check_cancelled, force=force,
                                 verify_after_write=verify_after_write,
                                 write_configdrive=write_configdrive)
        return outcome

    @command(is_async=True, validator="validate_image")
    def prepare_image(self, ctx: CommandContext, spec: Any, configdrive: Any = None,
                      force: bool = False, verify_after_write: bool = False) -> dict[str, Any]:
        outcome = self.run_prepare(ctx, spec, configdrive, force, verify_after_write)
        return shaped("prepare_image", outcome)

    @command(is_async=True, validator="validate_image")
    def cache_image(self, ctx: CommandContext, spec: Any, configdrive: Any = None,
                    force: bool = False, verify_after_write: bool = False) -> dict[str, Any]:
        outcome = self.run_prepare(ctx, spec, None, force, verify_after_write,
                                   write_configdrive=False)
        return shaped("cache_image", outcome)

    @command()
    def sync(self, ctx: CommandContext) -> None:
        flushed = power.flush_all()
        LOG.info("synced filesystems and flushed %d block devices", len(flushed))

    @command()
    def get_partition_uuids(self, ctx: CommandContext) -> dict[str, Any]:
        return dict(self.state.partition_uuids)

    @command(is_async=True)
    def power_off(self, ctx: CommandContext) -> None:
        power.refuse_unless_ramdisk(self.config, "standby.power_off")
        power.shutdown(reboot=False, config=self.config)

    @command(is_async=True)
    def run_image(self, ctx: CommandContext) -> None:
        power.refuse_unless_ramdisk(self.config, "standby.run_image")
        power.shutdown(reboot=True, config=self.config)
