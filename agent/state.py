"""Per-process agent state shared by extensions and the controller client.

One instance per agent (no module globals), so tests can run many agents in
one process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config, is_ramdisk


@dataclasses.dataclass(frozen=True)
class WrittenImage:
    """An image this agent wrote: which image, which bytes, which disk, and how it looked.

    ``fingerprint`` hashes the disk's first and last MiB after the write; a
    disk erased or written by anything else no longer matches it.
    """

    image_id: str
    algo: str
    digest: str
    device: str          # realpath of the disk
    device_number: int   # st_rdev, so a renamed node or a reused name is told apart
    size: int
    fingerprint: str


@dataclasses.dataclass
class AgentState:
    config: Config
    started_at: float = dataclasses.field(default_factory=time.time)
    node: dict[str, Any] | None = None
    ports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # what the last image write recorded, for standby.get_partition_uuids
    partition_uuids: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the whole-disk image this agent last wrote, for the "already written" shortcut
    written_image: WrittenImage | None = None
    # set by lockdown / finalize_rescue: the API and heartbeats stop
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)
    on_stop: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    tool_report: dict[str, str | None] = dataclasses.field(default_factory=dict)
    # loaded once by agent.hardware.managers.get_managers
    hardware_managers: list[Any] | None = None
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    @property
    def power_actions_allowed(self) -> bool:
        return is_ramdisk(self.config)

    def refresh_node(self, node: Any, ports: Any = None) -> None:
        """Cache the node dict the conductor sends with every step call."""
        if isinstance(node, dict):
            self.node = node
        if isinstance(ports, list):
            self.ports = ports

    def stop(self) -> None:
        self.stopped.set()
        for hook in list(self.on_stop):
            hook()
