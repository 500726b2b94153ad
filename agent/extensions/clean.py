"""The ``clean`` extension: list clean steps and run one (reference §4.1–4.3)."""

from __future__ import annotations

from typing import Any

from agent.commands import CommandContext, command
from agent.extensions import Extension, step_params
from agent.hardware import steps


class CleanExtension(Extension):
    name = "clean"

    @command(validator=step_params.get_steps_validator())
    def get_clean_steps(self, ctx: CommandContext, node: Any = None,
                        ports: Any = None) -> dict[str, Any]:
        return steps.get_steps(self.state, "clean", node, ports)

    @command(is_async=True, validator=step_params.execute_step_validator("clean"))
    def execute_clean_step(self, ctx: CommandContext, step: dict[str, Any], node: Any = None,
                           ports: Any = None, clean_version: Any = None) -> Any:
        return steps.execute_step(self.state, ctx, "clean", step, node, ports, clean_version)
