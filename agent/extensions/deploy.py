"""deploy: the conductor's deploy-step calls (reference §4)."""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, command
from agent.extensions import Extension, step_params


class DeployExtension(Extension):
    name = "deploy"

    @command(validator=step_params.get_steps_validator())
    def get_deploy_steps(self, ctx: CommandContext, node: Any = None,
                         ports: Any = None) -> dict[str, Any]:
        from agent.hardware import steps
        return steps.get_steps(self.state, "deploy", node, ports)

    @command(is_async=True, validator=step_params.execute_step_validator("deploy"))
    def execute_deploy_step(self, ctx: CommandContext, step: Any, node: Any = None,
                            ports: Any = None, deploy_version: Any = None) -> Any:
        from agent.hardware import steps
        return steps.execute_step(self.state, ctx, "deploy", step, node, ports, deploy_version)
