"""standby: image writes, partition UUIDs, sync and power."""

from __future__ import annotations

import logging
from typing import Any

from agent import power
from agent.commands import CommandContext, command
from agent.errors import PowerActionRefused
from agent.extensions import Extension

LOG = logging.getLogger(__name__)


def refuse_unless_ramdisk(ext: Extension, action: str) -> None:
    """Power actions act only inside a deploy ramdisk, never on a laptop or CI host."""
    if not ext.state.power_actions_allowed:
        raise PowerActionRefused(
            f"{action} refused: deploy-agent is not running from a deploy ramdisk "
            "(the root filesystem is not an initramfs and --ramdisk true was not given); "
            "this machine was left running and nothing was touched")


class StandbyExtension(Extension):
    name = "standby"

    @command()
    def sync(self, ctx: CommandContext) -> None:
        flushed = power.flush_all()
        LOG.info("synced filesystems and flushed %d block devices", len(flushed))

    @command()
    def get_partition_uuids(self, ctx: CommandContext) -> dict[str, Any]:
        return dict(self.state.partition_uuids)

    @command(is_async=True)
    def power_off(self, ctx: CommandContext) -> None:
        refuse_unless_ramdisk(self, "standby.power_off")
        power.shutdown(reboot=False, ntp_server=self.config.ntp_server)

    @command(is_async=True)
    def run_image(self, ctx: CommandContext) -> None:
        refuse_unless_ramdisk(self, "standby.run_image")
        power.shutdown(reboot=True, ntp_server=self.config.ntp_server)
