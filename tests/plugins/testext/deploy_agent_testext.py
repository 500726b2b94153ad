"""A test-only extension, registered through a real entry point.

Putting this directory on ``sys.path`` (or ``PYTHONPATH`` for a subprocess)
makes ``importlib.metadata`` find the ``deploy_agent.extensions`` entry point
in the neighbouring dist-info, exactly as an installed out-of-tree plugin.
"""

from __future__ import annotations

import time
from typing import Any

from agent.commands import CommandContext, command
from agent.errors import InvalidCommandParamsError
from agent.extensions import Extension


def _validate_echo(params: dict[str, Any]) -> dict[str, Any]:
    if "value" not in params:
        raise InvalidCommandParamsError("'value' is required")
    value = params["value"]
    if not isinstance(value, str) or not value:
        raise InvalidCommandParamsError(f"'value' must be a non-empty string, got {value!r}")
    return {"value": value}


class HarnessExtension(Extension):
    name = "testing"

    @command(is_async=True)
    def slow(self, ctx: CommandContext, steps: int = 100, delay: float = 0.05) -> str:
        """Counts to ``steps``, reporting progress and honouring cancel between steps."""
        ctx.progress.update(phase="counting", done=0, total=steps, unit="steps")
        for _ in range(steps):
            ctx.check_cancelled()
            time.sleep(delay)
            ctx.progress.advance(1)
        return f"counted to {steps}"

    @command()
    def fail_sync(self, ctx: CommandContext) -> None:
        raise ValueError("sync command broke")

    @command(is_async=True)
    def fail_async(self, ctx: CommandContext) -> None:
        raise ValueError("async command broke")

    @command(validator=_validate_echo)
    def echo(self, ctx: CommandContext, value: str) -> dict[str, Any]:
        return {"echoed": value}
