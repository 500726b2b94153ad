"""system.lockdown: stop serving and go quiet, for nodes that must not power off."""

from __future__ import annotations

import logging
import os
import threading

from agent import tools
from agent.commands import CommandContext, command
from agent.errors import AgentError
from agent.extensions import Extension
from agent.hardware.power import refuse_unless_ramdisk

LOG = logging.getLogger(__name__)


def _interfaces_down() -> None:
    for name in sorted(os.listdir("/sys/class/net")):
        if name == "lo":
            continue
        try:
            tools.run("ip", "link", "set", name, "down", timeout=10)
        except AgentError as exc:
            LOG.error("could not bring %s down: %s", name, exc.details)


class SystemExtension(Extension):
    name = "system"

    @command()
    def lockdown(self, ctx: CommandContext) -> None:
        refuse_unless_ramdisk(self.config, "system.lockdown")

        def later() -> None:
            # let the SUCCEEDED response reach the conductor before going dark
            LOG.warning("lockdown: stopping the API and heartbeats, taking NICs down")
            self.state.stop()
            _interfaces_down()

        threading.Timer(1.0, later).start()
