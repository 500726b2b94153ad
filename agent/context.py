"""What a running command is handed: its progress, its cancel flag, its id.

Below the command runner so that hardware/ and imaging/ can name the type
they are given instead of taking ``Any``.
"""

from __future__ import annotations

import threading

from agent import errors
from agent.progress import Progress


class CommandContext:
    """What a running command gets: progress, cancellation, and its own id."""

    def __init__(self, command_id: str, name: str) -> None:
        self.id = command_id
        self.name = name
        self.progress = Progress()
        self.cancel_event = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise errors.Cancelled(f"{self.name} was cancelled by request")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or raise Cancelled as soon as a cancel arrives."""
        if self.cancel_event.wait(max(0.0, seconds)):
            raise errors.Cancelled(f"{self.name} was cancelled by request")
