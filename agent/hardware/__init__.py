"""What the machine is, which disk to deploy to, how to clean it, and its power.

- ``managers``: hardware-manager plugins (entry points), ordering and dispatch; ``generic``: ours
- ``inventory`` with ``cpu``, ``memory``, ``disks``, ``interfaces``, ``dmi``, ``bmc``, ``boot``
- ``hints``: root-device hints and the skip list
- ``erase`` (planning and running) with ``erase_guards`` (in use? shared SAN?), ``erase_base``
  (options), ``erase_metadata``, ``erase_ata``, ``erase_nvme``, ``erase_overwrite``
- ``power``: flush, power off or reboot, and the refusal outside a ramdisk

``find_install_disk`` below is the entry point for imaging: it waits for disks,
applies the node's root-device hints and skip list, and says why it chose
the disk it returns.
"""

from __future__ import annotations

import logging
import time

from agent.context import CommandContext
from agent.errors import DeviceNotFound
from agent.hardware.disks import Disk
from agent.state import AgentState

LOG = logging.getLogger(__name__)


def find_install_disk(state: AgentState, ctx: CommandContext | None = None
                      ) -> tuple[Disk, str]:
    """(Disk, reason) for the cached node; raise DeviceNotFound after the disk wait."""
    from agent.hardware import hints, managers

    node = state.node or {}
    # bad hints never get better by waiting: fail before the first attempt
    hints.parse_hints(hints.hints_from_node(node))
    hints.parse_skip_list(hints.skip_list_from_node(node))
    attempts = max(1, state.config.disk_wait_attempts)
    delay = state.config.disk_wait_delay
    last: DeviceNotFound | None = None
    for attempt in range(1, attempts + 1):
        try:
            disk, reason = managers.dispatch(state, "get_os_install_device", node)
            # logged here, not by the manager, so plugin managers' choices show too
            LOG.info("install disk: %s", reason)
            return disk, reason
        except DeviceNotFound as exc:
            last = exc
        if attempt < attempts:
            LOG.info("no install disk yet (attempt %d of %d): %s; waiting %.1fs", attempt,
                     attempts, last.details, delay)
            if ctx is not None:
                ctx.sleep(delay)
            else:
                time.sleep(delay)
    assert last is not None
    raise last
