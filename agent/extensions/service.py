"""service: steps on an active node (reference §3.6)."""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, command
from agent.extensions import Extension, step_params


class ServiceExtension(Extension):
    name = "service"

    @command(validator=step_params.get_steps_validator())
    def get_service_steps(self, ctx: CommandContext, node: Any = None,
                          ports: Any = None) -> dict[str, Any]:
        from agent.hardware import steps
        return steps.get_steps(self.state, "service", node, ports)

    @command(is_async=True, validator=step_params.execute_step_validator("service"))
    def execute_service_step(self, ctx: CommandContext, step: Any, node: Any = None,
                             ports: Any = None, service_version: Any = None) -> Any:
        from agent.hardware import steps
        return steps.execute_step(self.state, ctx, "service", step, node, ports,
                                  service_version)
