"""A stand-in for ``agent.tools.run`` that replays captured tool output.

Only hardware this machine lacks (IPMI, NVMe, ATA security) is faked; the
outputs are real captures stored under tests/fixtures/hardware.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from agent.errors import ToolError

FIXTURES = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "fixtures",
                                         "hardware"))


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


class FakeTools:
    """Maps (tool, *args) to output; records every call in ``calls``."""

    def __init__(self, responses: dict[tuple[str, ...], Any] | None = None) -> None:
        self.responses = dict(responses or {})
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, tool: str, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
        key = (tool, *[str(a) for a in args])
        self.calls.append(key)
        response = self.responses.get(key)
        if response is None:
            raise ToolError(f"{tool} {' '.join(key[1:])} failed with exit code 1: "
                            "Invalid channel", tool=tool, returncode=1)
        if callable(response):
            response = response(key)
        if isinstance(response, Exception):
            raise response
        return subprocess.CompletedProcess(list(key), 0, response, "")
