"""The ``poll`` extension: the full hardware inventory (reference §9.1)."""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, command
from agent.extensions import Extension
from agent.hardware import managers


class PollExtension(Extension):
    name = "poll"

    @command()
    def get_hardware_info(self, ctx: CommandContext) -> dict[str, Any]:
        # a vendor manager may replace the inventory; the generic one reads sysfs
        return managers.dispatch(self.state, "list_hardware_info")
